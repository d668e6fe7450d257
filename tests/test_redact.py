"""Secrets are never written down (issue 12, part 6): a password in MLFLOW_TRACKING_URI appears in no
log line and no file, and the spool gets it back from the environment when it replays.

The "server away" case is real: nothing listens on the port, so the tracker spools as in production.
"""

from __future__ import annotations

import pytest

from ampflow import tracking
from ampflow.config import RunConfig
from ampflow.redact import redact_text, redact_uri, with_credentials
from ampflow.tracking.server import free_port


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://alice:s3cret@mlflow.example:5000", "http://mlflow.example:5000"),
        ("https://tok@host/path?x=1", "https://host/path"),
        ("s3://key:secret@bucket/x.csv?token=abc#frag", "s3://bucket/x.csv"),
        ("sqlite:////tmp/mlruns.db", "sqlite:////tmp/mlruns.db"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def test_redact_text_masks_userinfo_and_secret_query_values():
    text = "Max retries for url http://alice:s3cret@h:5000/api?run_id=1&access_token=XYZ&x=2 (caused by ...)"
    assert (
        redact_text(text)
        == "Max retries for url http://h:5000/api?run_id=1&access_token=***&x=2 (caused by ...)"
    )


def test_with_credentials_takes_them_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@h:5000")
    assert with_credentials("http://h:5000") == "http://alice:s3cret@h:5000"
    assert with_credentials("http://other:5000") == "http://other:5000"
    assert with_credentials(None) is None


def test_a_password_in_the_tracking_uri_reaches_no_log_line_and_no_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{free_port()}")
    monkeypatch.setenv("AMPFLOW_SYSTEM_METRICS", "0")
    run_dir = tmp_path / "run"
    t = tracking.start_run("train", config=RunConfig(), run_dir=run_dir)
    t.log_metrics({"loss": 1.0}, step=0)
    t.close("FINISHED")
    err = capsys.readouterr().err
    assert "unreachable" in err and "127.0.0.1" in err
    assert "s3cret" not in err and "alice" not in err
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert written and not [p for p in written if b"s3cret" in p.read_bytes()]

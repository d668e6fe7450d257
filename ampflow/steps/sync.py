"""``ampflow sync``: replay a run directory's tracking spool to the MLflow server, exactly once.

    ampflow sync runs/bf16-mixed                  # MLFLOW_TRACKING_URI, else the URI the run used
    ampflow sync runs/bf16-mixed --tracking-uri http://mlflow:5000

Replays ``RUN_DIR/tracking/`` (and folders set aside as ``tracking.<time>/``) in sequence order and
records each acknowledged operation, so running it twice, or after a crash mid-replay, sends nothing
twice. Exit 0 when everything is sent, 1 when the server is still unreachable (nothing is lost).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.redact import with_credentials

HELP = "replay metrics spooled while the MLflow server was unreachable (exactly once)"


def add_arguments(p: Any) -> None:
    p.add_argument("run_dir", help="run directory holding tracking/spool.jsonl")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="server to send to (default: MLFLOW_TRACKING_URI, else the run's)",
    )


def cli(args: Any) -> int:
    result = run(args.run_dir, uri=args.tracking_uri)
    for folder in result["folders"]:
        print(
            f"{folder['folder']}: sent {folder['sent']}, pending {folder['pending']}"
            + (f" ({folder['error']})" if folder.get("error") else "")
        )
    return 0 if result["pending"] == 0 else 1


def run(run_dir: str | Path, *, uri: str | None = None) -> dict[str, Any]:
    import os

    from mlflow.tracking import MlflowClient

    from ampflow.tracking.spool import FOLDER, STATE, Spool
    from ampflow.tracking.writer import Sender, apply_http_defaults, short_error

    run_dir = Path(run_dir)
    folders = sorted(p for p in run_dir.glob(f"{FOLDER}*") if (p / STATE).is_file())
    if not folders:
        raise ConfigError(f"{run_dir}: no tracking spool ({FOLDER}/{STATE}); nothing to sync")
    apply_http_defaults()
    report = []
    for folder in folders:
        spool = Spool(folder)
        # the state holds the redacted URI; its credentials come from the environment now
        target = (
            uri or os.environ.get("MLFLOW_TRACKING_URI") or with_credentials(spool.state.get("tracking_uri"))
        )
        if not target:
            raise ConfigError(f"{folder}: no tracking URI recorded; pass --tracking-uri")
        sender = Sender(MlflowClient(target), spool)
        entry: dict[str, Any] = {"folder": str(folder), "sent": 0}
        try:
            entry["sent"] = sender.replay()
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {short_error(exc)}"
            print(
                f"ampflow sync: {folder}: server unreachable, spool kept ({entry['error']})", file=sys.stderr
            )
        entry["pending"] = len(spool.pending())
        entry["run_id"] = spool.state.get("run_id")
        report.append(entry)
    return {
        "folders": report,
        "sent": sum(f["sent"] for f in report),
        "pending": sum(f["pending"] for f in report),
    }

"""The CLI contract: exit codes, --help for every step, one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ampflow.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _ampflow(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ampflow", *args], cwd=cwd, capture_output=True, text=True)


def _steps() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "step")
    return sorted(sub.choices)


def test_top_level_help_lists_the_steps():
    proc = _ampflow("--help")
    assert proc.returncode == 0
    for step in _steps():
        assert step in proc.stdout


@pytest.mark.parametrize("step", _steps())
def test_every_step_has_help(step):
    proc = _ampflow(step, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: ampflow " + step in proc.stdout


def test_unknown_step_is_bad_input():
    proc = _ampflow("fly")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bench", "--recipe", "tweets-bow", "--out", "{tmp}", "--precisions", "32-true,fp9"], "precision"),
        (["bench", "--recipe", "tweets-bow", "--out", "{tmp}", "--compile", "sometimes"], "compile"),
        (["bench", "--recipe", "tweets-bow", "--out", "{tmp}", "--set", "bogus=1"], "bogus"),
        (["bench", "--recipe", "tweets-bow", "--out", "{tmp}", "--set", "batch_size=0"], "batch_size"),
        (["bench", "--recipe", "tweets-bow", "--out", "{tmp}", "--precisions", "bf16-mixed"], "baseline"),
        (
            [
                "bench",
                "--recipe",
                "tweets-bow",
                "--out",
                "{tmp}",
                "--precisions",
                "32-true,16-mixed",
                "--set",
                "device=cpu",
            ],
            "16-mixed",
        ),
    ],
)
def test_bench_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "out"
    proc = _ampflow(*[a.replace("{tmp}", str(out)) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_python_dash_m_and_console_script_agree():
    script = Path(sys.executable).with_name("ampflow")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    a = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    b = _ampflow("--version")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


def test_a_step_that_fails_to_import_is_an_error_not_a_missing_command(monkeypatch):
    from ampflow import cli

    monkeypatch.setitem(cli.STEP_MODULES, "ghost", "ampflow.steps.no_such_step")
    with pytest.raises(ModuleNotFoundError, match="ampflow.steps.no_such_step"):
        cli.build_parser()

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


def test_every_step_help_ends_with_real_examples_and_defaults(capsys):
    """`--help` answers: two or three commands that run, taken from each entry module's docstring."""
    from ampflow.steps import STEP_MODULES

    for step in STEP_MODULES:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([step, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        commands = [e for e in examples if e.startswith("    ") and not e.startswith("        ")]
        assert len(commands) >= 2, (step, commands)
        assert all(f"ampflow {step}" in c or "torchrun" in c for c in commands), (step, commands)


def test_train_help_lists_every_set_key_with_type_and_default(capsys):
    from ampflow.config import RunConfig

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    table = text.split("--set keys", 1)[1]
    for name in set(RunConfig.field_names()) - {"recipe"}:
        assert f"\n  {name} " in table, name
    assert "max_steps " in table and "integer or none" in table


def test_bench_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(medians, spread) (default: 1)",
        "compared with (default: 32-true)",
        "points (default: 0.5)",
    ):
        assert shown in text, shown

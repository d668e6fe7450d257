"""The README runs as written: every fenced shell block, in order, in one fresh working directory.

Each block runs in ``bash -e -o pipefail`` with the repository's ``.venv/bin`` first on PATH (so
``ampflow`` and ``python`` are the training venv's, as after ``source .venv/bin/activate``), the
variables that point somewhere else (``MLFLOW_TRACKING_URI``, ``AMPFLOW_EXPERIMENT``, ``PYTHONPATH``, ...)
removed, and the test session's one-thread torch settings (tests/conftest.py). Blocks share the
working directory, so a later block uses what an earlier one wrote (prep, then train), as a person
following the README top to bottom would. A block must exit 0 and leave the paths its ``expect``
markers name.

The HTML-comment markers above a block (``<!-- readme-test: skip (reason) -->``, ``env``, ``replace``,
``copy``, ``expect``) are described in :mod:`tests.readme_blocks`. ``replace`` shrinks a run to test
size (fewer steps, a row limit) or fills in a placeholder; ``skip`` marks a block that needs what this
machine lacks (a cluster, a GPU, a docker engine, a running server), and pytest reports its reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.readme_blocks import Block, MarkerError, console_commands, parse, readme_blocks

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
BLOCKS = readme_blocks(README)
# set by whoever runs the tests, not by a person following the README
DROPPED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "AMPFLOW_EXPERIMENT",
    "AMPFLOW_TRACKING",
    "AMPFLOW_BIN",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)
BLOCK_TIMEOUT_S = 600


def block_env(block: Block) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV and not k.startswith("PYTEST_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(block.env)
    return env


def run_block(block: Block, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run one block in ``workdir`` (its ``copy`` paths copied in first); its output is returned."""
    for path in block.copy:
        src, dst = REPO / path, workdir / path
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return subprocess.run(  # noqa: S603 - the README's own commands
        ["bash", "-e", "-o", "pipefail", "-c", block.script()],
        cwd=workdir,
        env=block_env(block),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory for the whole README: later blocks use what earlier ones wrote."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, workdir: Path):
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    proc = run_block(block, workdir)
    output = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, (
        f"README.md:{block.line} ({block.section}) exited {proc.returncode}:\n{block.script()}\n---\n{output}"
    )
    missing = [p for p in block.expect if not (workdir / p).exists()]
    assert not missing, f"README.md:{block.line}: the text promises {missing}, not written:\n{output}"


def test_every_readme_shell_block_is_valid_bash_skipped_ones_included():
    """A broken line continuation or quote in a block nobody can run here is caught too."""
    assert BLOCKS, "README.md has no shell blocks?"
    for block in BLOCKS:
        proc = subprocess.run(  # noqa: S603
            ["bash", "-n", "-c", block.script()], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"README.md:{block.line}: {proc.stderr}"


def test_every_skip_says_why_and_the_readme_says_skipped_blocks_are_skipped():
    skipped = [b for b in BLOCKS if b.skip]
    assert all(len(b.skip) >= 10 for b in skipped), [(b.line, b.skip) for b in skipped]
    assert "tests/test_readme_blocks.py" in README.read_text(encoding="utf-8")


def test_markers_attach_to_the_shell_block_below_them():
    text = (
        "## Start\n\n"
        '<!-- readme-test: replace "max_steps=200" "max_steps=2" -->\n'
        "<!-- readme-test: env A=1 B='two words' -->\n\n"
        "<!-- readme-test: expect runs/x/result.json out/ -->\n"
        "```bash\nampflow train --set max_steps=200\n```\n\n"
        "### Later\n"
        "<!-- readme-test: skip (needs a Kubernetes cluster) -->\n"
        "```sh\nkubectl apply -f x.yaml\n```\n"
        "```\nnot a shell block\n```\n"
        "```console\n$ ampflow recipes \\\n  --json\n[{...}]\n$ echo done\ndone\n```\n"
    )
    first, second, third = parse(text)
    assert (first.line, first.section, first.env) == (7, "Start", {"A": "1", "B": "two words"})
    assert first.script() == "ampflow train --set max_steps=2\n"
    assert first.expect == ["runs/x/result.json", "out/"] and first.skip is None
    assert (second.skip, second.section, second.id) == ("needs a Kubernetes cluster", "Later", "L13-later")
    assert third.script() == "ampflow recipes \\\n  --json\necho done\n"
    assert console_commands("$ a\nout\n") == "a\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- readme-test: skip -->\n```bash\nx\n```\n", "reason in parentheses"),
        ("<!-- readme-test: skip () -->\n```bash\nx\n```\n", "reason in parentheses"),
        ("<!-- readme-test: expect -->\n```bash\nx\n```\n", "at least one path"),
        ("<!-- readme-test: retry 3 -->\n```bash\nx\n```\n", "unknown readme-test directive 'retry'"),
        ("<!-- readme-test: env NOEQUALS -->\n```bash\nx\n```\n", "KEY=VALUE"),
        ('<!-- readme-test: replace "a" -->\n```bash\nx\n```\n', "two quoted texts"),
        ("<!-- readme-test: skip (why not) -->\nsome prose\n```bash\nx\n```\n", "not followed by a shell"),
        ("<!-- readme-test: skip (why not) -->\n```yaml\nx: 1\n```\n", "not a shell block (yaml"),
        ("text\n<!-- readme-test: skip (why not) -->\n", "at the end"),
    ],
)
def test_a_marker_that_cannot_apply_is_an_error(text, message):
    with pytest.raises(MarkerError, match=message.replace("(", r"\(")):
        parse(text)


def test_a_replace_whose_text_went_stale_is_an_error():
    (block,) = parse('<!-- readme-test: replace "max_steps=200" "max_steps=2" -->\n```bash\nx\n```\n')
    with pytest.raises(MarkerError, match="does not contain"):
        block.script()

"""Compile the pipelines to KFP IR YAML (what a platform team uploads to Kubeflow Pipelines).

    python -m pipelines.compile                    # writes pipelines/compiled/{benchmark,retrain}.yaml
    python -m pipelines.compile --out /tmp/kfp     # somewhere else (the staleness test does this)
    python -m pipelines.compile --check            # exit 1 when the committed YAML is stale

Torch-free and mlflow-free: it runs where only kfp is installed.
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import re
import sys
import tempfile
from pathlib import Path

COMPILED = Path(__file__).resolve().parent / "compiled"


def pipelines() -> dict:
    from pipelines.benchmark import benchmark
    from pipelines.retrain import retrain

    return {"benchmark": benchmark, "retrain": retrain}


# kfp writes parameter defaults into the YAML's header comment in the order a protobuf Struct hands them
# back, which changes between processes; the YAML body itself is stable.
_DEFAULT_RE = re.compile(r"^(#    \S+: \w+ \[Default: )(.*)\]$")


def _sorted_literal(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_literal(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_literal(v) for v in value) + "]"
    return repr(value)


def _stable_header(text: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = _DEFAULT_RE.match(line)
        if match and match.group(2)[:1] in "[{":
            lines[i] = f"{match.group(1)}{_sorted_literal(ast.literal_eval(match.group(2)))}]"
    return "\n".join(lines)


def compile_all(out: str | Path) -> list[Path]:
    from kfp import compiler

    from ampflow.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, func in pipelines().items():
        with tempfile.TemporaryDirectory() as tmp:
            tmp_file = Path(tmp) / f"{name}.yaml"
            compiler.Compiler().compile(func, str(tmp_file))
            target = out / f"{name}.yaml"
            atomic_write_text(target, _stable_header(tmp_file.read_text(encoding="utf-8")))
        written.append(target)
    return written


def stale(committed: Path = COMPILED) -> list[str]:
    """Names of compiled files that differ from a fresh compile (or are missing)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(tmp)
        return [
            f.name
            for f in fresh
            if not (committed / f.name).is_file() or not filecmp.cmp(f, committed / f.name, shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(COMPILED), help="output folder (default: %(default)s)")
    parser.add_argument(
        "--check", action="store_true", help="only report whether the committed YAML is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        names = stale(Path(args.out))
        if names:
            print(f"stale compiled pipelines: {', '.join(names)}; run `make compile`", file=sys.stderr)
            return 1
        print("compiled pipelines are up to date")
        return 0
    for path in compile_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

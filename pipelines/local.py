"""Run the benchmark pipeline on this machine through ``kfp.local`` (no cluster, no container engine).

    ampflow bench --engine kfp-local --recipe tweets-bow --precisions 32-true,bf16-mixed --limit 300 \\
        --set max_steps=8 --set warmup_steps=2 --out bench-kfp/
    python -m pipelines.local --recipe tweets-bow --precisions 32-true,bf16-mixed --limit 300 \\
        --set max_steps=8 --set warmup_steps=2 --out bench-kfp/

Each component runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``), so ampflow
and kfp must be installed here; resource, GPU and ``kfp.kubernetes`` settings have no effect locally.
Logs to MLflow wherever ``MLFLOW_TRACKING_URI`` points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from ampflow.config import SweepSpec


def run_benchmark_locally(
    *,
    recipe: str,
    sweep: SweepSpec,
    out: str | Path,
    overrides: list[str] | None = None,
    tolerance: float = 0.5,
    limit: int | None = None,
    source: str | None = None,
    fail_on_regression: bool = False,
) -> dict[str, Any]:
    """Run ``pipelines.benchmark`` through kfp.local; return compare's summary (plus ``markdown``).

    The entry point of ``ampflow bench --engine kfp-local`` (the ``ampflow.engines`` entry point
    ``kfp-local``). ``sweep`` (precisions, compile modes, repeats, baseline) becomes the pipeline's
    sweep parameters as they are. ``out`` gets summary.json, report.md and report.html (as ``ampflow
    bench`` writes them) and ``kfp/``, the local pipeline root with every task's artifacts and logs.
    ``fail_on_regression``: the pipeline's parameter (compare exits 3 on a regression against earlier
    runs). Raises RuntimeError when the pipeline fails.
    """
    from kfp import local

    from pipelines.benchmark import build_benchmark

    out = Path(out)
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with warnings.catch_warnings():
        # resources, kfp.kubernetes settings and the image are for the cluster; locally they are noise
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        build_benchmark(train_retries=0)(
            recipe=recipe,
            precisions=list(sweep.precisions),
            compile_modes=sweep.compile_words,
            repeats=sweep.repeats,
            baseline=sweep.baseline,
            tolerance=tolerance,
            settings=list(overrides or []),
            source=source or "",
            limit=limit or 0,
            fail_on_regression=fail_on_regression,
        )
    (run_dir,) = [p for p in root.iterdir() if p not in before and p.is_dir()]
    compare_dir = find_task_dir(run_dir, "compare")
    copies = {"summary": "summary.json", "report_md": "report.md", "report_html": "report.html"}
    for artifact, name in copies.items():
        shutil.copyfile(compare_dir / artifact, out / name)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    summary.setdefault("markdown", (out / "report.md").read_text(encoding="utf-8"))
    summary["kfp_run_dir"] = str(run_dir)
    return summary


def find_task_dir(run_dir: Path, task: str) -> Path:
    """The folder kfp.local wrote one task's outputs to (tasks in control-flow groups nest)."""
    found = sorted(p for p in run_dir.rglob(task) if p.is_dir())
    if len(found) != 1:
        raise RuntimeError(f"expected one {task!r} task folder under {run_dir}, found {len(found)}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.local``: the same flags as ``ampflow bench`` for the sweep."""
    from ampflow.config import BASELINE_PRECISION

    p = argparse.ArgumentParser(prog="python -m pipelines.local", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--precisions", default="32-true,bf16-mixed")
    p.add_argument("--compile", dest="compile_modes", default="off", help="off, on or off,on")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.5)
    p.add_argument("--baseline", default=BASELINE_PRECISION)
    p.add_argument("--limit", type=int)
    p.add_argument("--source")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    summary = run_benchmark_locally(
        recipe=args.recipe,
        sweep=SweepSpec.from_words(args.precisions, args.compile_modes, args.repeats, args.baseline),
        out=args.out,
        overrides=args.overrides,
        tolerance=args.tolerance,
        limit=args.limit,
        source=args.source,
    )
    print(summary["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

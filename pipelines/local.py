"""Run the benchmark pipeline on this machine through ``kfp.local`` (no cluster, no container engine).

    ampflow bench --engine kfp-local --recipe tweets-bow --precisions 32-true,bf16-mixed --limit 300 \\
        --set max_steps=8 --set warmup_steps=2 --out bench-kfp/
    python -m pipelines.local --recipe tweets-bow --precisions 32-true,bf16-mixed --limit 300 \\
        --set max_steps=8 --set warmup_steps=2 --out bench-kfp/

Each component runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``), so ampflow
and kfp must be installed here; resource, GPU and ``kfp.kubernetes`` settings have no effect locally.
Logs to MLflow wherever ``MLFLOW_TRACKING_URI`` points.

The terminal gets one line per task state change (task, configuration, state, time since the start
and the task's duration); kfp.local's own output (every task's executor input and output, the steps'
logs) goes to ``--out/kfp-local.log``, whose path is printed at the end. A task that fails also
prints its last lines on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ampflow.config import SweepSpec

LOG_FILE = "kfp-local.log"
# lines of a failed task's output repeated on stderr
FAILED_TAIL_LINES = 25


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
    bench`` writes them), ``kfp/``, the local pipeline root with every task's artifacts, and
    ``kfp-local.log``, kfp.local's own output (module docstring). ``fail_on_regression``: the
    pipeline's parameter (compare exits 3 on a regression against earlier runs). Raises RuntimeError
    when the pipeline fails.
    """
    from kfp import local

    from pipelines.benchmark import build_benchmark

    out = Path(out)
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with warnings.catch_warnings(), task_lines(out / LOG_FILE, "ampflow-benchmark"):
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


class TaskLines:
    """One line per task state change on ``stream``, e.g. ``kfp-local [  41.2 s] train 32-true:
    succeeded in 35.0 s``; a failed task's last lines of ``log`` follow on ``errors``."""

    def __init__(self, log: TextIO, stream: TextIO, errors: TextIO) -> None:
        self.log, self.stream, self.errors = log, stream, errors
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def say(self, text: str, stream: TextIO | None = None) -> None:
        with self.lock:
            print(f"kfp-local [{time.monotonic() - self.start:7.1f} s] {text}", file=stream or self.stream)
            (stream or self.stream).flush()

    def wrap(self, run_task: Callable[..., Any]) -> Callable[..., Any]:
        """``kfp.local.task_dispatcher.run_single_task_implementation``, announcing each task."""
        from kfp.local import status

        def announced(**kwargs: Any) -> Any:
            label = task_label(kwargs.get("component_name", "?"), kwargs.get("arguments") or {})
            self.log.flush()
            offset = self.log.tell()
            self.say(f"{label}: running")
            began = time.monotonic()
            try:
                outputs, task_status = run_task(**kwargs)
            except BaseException:
                self.say(f"{label}: failed after {time.monotonic() - began:.1f} s", self.errors)
                self.tail(label, offset)
                raise
            ok = task_status == status.Status.SUCCESS
            state = "succeeded in" if ok else "failed after"
            self.say(f"{label}: {state} {time.monotonic() - began:.1f} s", None if ok else self.errors)
            if not ok:
                self.tail(label, offset)
            return outputs, task_status

        return announced

    def tail(self, label: str, offset: int) -> None:
        """The last lines ``label`` wrote into the log (its executor's output), on ``errors``."""
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as fh:
            fh.seek(offset)
            lines = [line.rstrip() for line in fh if line.strip()]
        with self.lock:
            for line in lines[-FAILED_TAIL_LINES:]:
                print(f"  {label} | {line.strip()}", file=self.errors)
            self.errors.flush()


def task_label(component_name: str, arguments: dict[str, Any]) -> str:
    """A task as a person knows it: ``prep``, ``train 32-true``, ``evaluate bf16-mixed-compiled``."""
    from ampflow.config import config_id

    name = component_name.removeprefix("comp-")
    name = name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name
    cid = None
    with contextlib.suppress(Exception):  # a label only: never fail a task over it
        if arguments.get("precision"):
            cid = config_id(
                arguments["precision"],
                bool(arguments.get("compile", False)),
                arguments.get("strategy") or "single",
            )
        elif getattr(arguments.get("model"), "metadata", None):
            cid = arguments["model"].metadata.get("config_id")
    return f"{name} {cid}" if cid else name


@contextlib.contextmanager
def task_lines(log_path: Path, pipeline: str) -> Iterator[TaskLines]:
    """While a local pipeline runs: kfp.local's output (its logging, every executor's streamed output,
    warnings) into ``log_path``, one line per task state change on this process's stdout."""
    from kfp.local import task_dispatcher

    stream, errors = sys.stdout, sys.stderr
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        log.write(f"\n==== {pipeline} {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        lines = TaskLines(log, stream, errors)
        print(
            f"kfp-local: {pipeline} on this machine; kfp.local's own output goes to {log_path}", file=stream
        )
        original = task_dispatcher.run_single_task_implementation
        task_dispatcher.run_single_task_implementation = lines.wrap(original)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield lines
        except BaseException:
            print(
                f"kfp-local: {pipeline} failed after {time.monotonic() - lines.start:.1f} s; "
                f"every task's output: {log_path}",
                file=errors,
            )
            raise
        finally:
            task_dispatcher.run_single_task_implementation = original
    print(
        f"kfp-local: {pipeline} succeeded in {time.monotonic() - lines.start:.1f} s; every task's "
        f"output: {log_path}",
        file=stream,
    )


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

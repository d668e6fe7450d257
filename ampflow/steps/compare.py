"""``ampflow compare``: turn a sweep into a verdict (fastest configuration that keeps accuracy), and flag
regressions against earlier sweeps of the same recipe on the same hardware.

    ampflow compare --runs bench/runs/32-true,bench/runs/bf16-mixed --out bench/compare
    ampflow compare --sweep <parent run id> --out report/ --fail-on-regression
    ampflow compare --experiment ampflow/tweets-bow --recipe tweets-bow --out report/

Writes ``summary.json`` (schema ``ampflow.compare/1``, documented in the README), ``report.md`` and a
self-contained ``report.html`` (plots embedded as base64 PNG) into ``--out``, and logs all three as
artifacts of the sweep's parent run when there is one.

Runs that are not comparable (a setting other than precision, compile or strategy differs, or the
recipe, dataset or device; :mod:`ampflow.compare.comparable`) are refused with exit 2, unless
``--allow-mismatch FIELD,...`` lets a person compare them anyway (the report's header then lists them).

Exit codes: 0 done (also when nothing can be recommended: ``recommended`` is then null and the reason
says which run lacks which figure), 2 bad input, 1 failure, 3 a regression was found and
``--fail-on-regression`` is set.

The step only: arguments and the glue between them. The comparison is :mod:`ampflow.compare`'s, the
MLflow reads and the write-back :mod:`ampflow.tracking.queries`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ampflow.compare.markdown import closing_lines, render_markdown
from ampflow.compare.regression import DEFAULT_ACCURACY_DROP_PP, DEFAULT_THROUGHPUT_DROP
from ampflow.compare.summary import compare_runs, write_reports
from ampflow.compare.verdict import DEFAULT_TOLERANCE_PP
from ampflow.config import BASELINE_PRECISION, ConfigError

HELP = (
    "compare a sweep's configurations against the baseline: speedup, memory, accuracy, verdict, regressions"
)
EXIT_REGRESSION = 3


def add_arguments(p: Any) -> None:
    """The step's options on an argparse parser (``ampflow compare --help``)."""
    src = p.add_argument_group("input (one of)")
    src.add_argument("--runs", help="comma-separated run directories (each with result.json and eval.json)")
    src.add_argument("--sweep", help="MLflow run id of a sweep's parent run")
    src.add_argument("--experiment", help="MLflow experiment: its latest sweep is compared (with --recipe)")
    p.add_argument("--recipe", help="recipe of the sweep to find in --experiment")
    p.add_argument("--out", help="where summary.json, report.md and report.html go (default: print only)")
    p.add_argument(
        "--baseline", default=BASELINE_PRECISION, help="configuration the others are compared with"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_PP,
        help="accuracy loss allowed against the baseline, in percentage points (default 0.5)",
    )
    p.add_argument(
        "--throughput-drop",
        type=float,
        default=DEFAULT_THROUGHPUT_DROP,
        help="regression threshold: fraction of throughput lost against previous sweeps (default 0.10)",
    )
    p.add_argument(
        "--accuracy-drop",
        type=float,
        default=DEFAULT_ACCURACY_DROP_PP,
        help="regression threshold: accuracy lost against previous sweeps, percentage points (default 1.0)",
    )
    p.add_argument(
        "--allow-mismatch",
        metavar="FIELD,...",
        help="compare runs that differ in these settings anyway (recipe, dataset_hash, device_name or a "
        "--set key); the report lists the differences",
    )
    p.add_argument(
        "--fail-on-regression", action="store_true", help=f"exit {EXIT_REGRESSION} when a regression is found"
    )
    p.add_argument(
        "--record-sweep",
        action="store_true",
        help="with --runs: record the runs as one sweep (the parent run `ampflow bench` creates), so that "
        "later comparisons check against them (KFP and Airflow pass it)",
    )


def cli(args: Any) -> int:
    """Run from parsed arguments and print the Markdown report; the exit code (module docstring)."""
    runs = [r for r in (args.runs or "").split(",") if r.strip()]
    summary = run(
        runs=runs or None,
        sweep=args.sweep,
        experiment=args.experiment,
        recipe=args.recipe,
        out=args.out,
        baseline=args.baseline,
        tolerance=args.tolerance,
        throughput_drop=args.throughput_drop,
        accuracy_drop=args.accuracy_drop,
        allow_mismatch=getattr(args, "allow_mismatch", None),
        record_sweep=args.record_sweep,
    )
    print(render_markdown(summary))
    print(closing_lines(summary, Path(args.out) if args.out else None))
    if summary["regressed"] and args.fail_on_regression:
        print(
            f"ampflow compare: regression against previous sweeps (exit {EXIT_REGRESSION})", file=sys.stderr
        )
        return EXIT_REGRESSION
    return 0


def run(
    *,
    runs: list[str | Path] | None = None,
    sweep: str | None = None,
    experiment: str | None = None,
    recipe: str | None = None,
    out: str | Path | None = None,
    baseline: str = BASELINE_PRECISION,
    tolerance: float = DEFAULT_TOLERANCE_PP,
    throughput_drop: float = DEFAULT_THROUGHPUT_DROP,
    accuracy_drop: float = DEFAULT_ACCURACY_DROP_PP,
    tracking_uri: str | None = None,
    allow_mismatch: str | list[str] | None = None,
    record_sweep: bool = False,
) -> dict[str, Any]:
    """Compare, write the reports into ``out`` and log them on the sweep's parent run.

    Exactly one input: ``runs`` (run directories), ``sweep`` (a parent run id) or ``experiment`` with
    ``recipe`` (its latest sweep); ``allow_mismatch``: fields that may differ
    (:func:`ampflow.compare.comparable.parse_allowed`); ``record_sweep``: with ``runs``, record them as one
    sweep first (:func:`ampflow.tracking.sweeps.link_sweep`). Returns the summary (:func:`ampflow.compare.summary.compare_runs`).
    Raises :class:`ConfigError` on bad input.
    """
    given = [name for name, v in (("--runs", runs), ("--sweep", sweep), ("--experiment", experiment)) if v]
    if len(given) != 1:
        raise ConfigError("compare needs exactly one input: --runs DIRS, --sweep RUN_ID or --experiment NAME")
    if experiment and not recipe:
        raise ConfigError("--experiment needs --recipe (the recipe whose latest sweep is compared)")
    if runs:
        inputs: list[Any] = list(runs)
        if record_sweep:  # the sweep parent a pipeline's runs lack (ampflow.tracking.sweeps)
            from ampflow.compare.records import to_records
            from ampflow.tracking.sweeps import link_sweep

            inputs = to_records(inputs)
            link_sweep(inputs, baseline=baseline, tolerance=tolerance, uri=tracking_uri)
    else:
        from ampflow.tracking import queries  # mlflow only for tracked sweeps

        if experiment:
            sweep = queries.latest_sweep(experiment, recipe, uri=tracking_uri)
        inputs = queries.records_from_sweep(sweep, uri=tracking_uri)
    summary = compare_runs(
        inputs,
        baseline=baseline,
        tolerance=tolerance,
        throughput_drop=throughput_drop,
        accuracy_drop=accuracy_drop,
        tracking_uri=tracking_uri,
        allow_mismatch=allow_mismatch,
    )
    if sweep and not summary.get("sweep_run_id"):
        summary["sweep_run_id"] = sweep
    files = write_reports(summary, out) if out else []
    if files and summary.get("sweep_run_id"):
        from ampflow.tracking import queries

        queries.publish_summary(summary, files, uri=summary.get("tracking_uri") or tracking_uri)
        from ampflow.tracking.sweeps import log_comparison_views

        log_comparison_views(summary, uri=summary.get("tracking_uri") or tracking_uri)
    return summary

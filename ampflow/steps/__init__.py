"""Steps: prep, train, evaluate, bench, compare, register, launch, sync, close-runs, recipes, doctor.

Each step module is importable without torch or mlflow (they load inside ``run``) and exposes:

- ``HELP``: one line for ``ampflow --help``;
- ``add_arguments(parser)``: its CLI options;
- ``cli(args) -> int``: turns parsed arguments into a ``run(...)`` call and prints the human output;
- ``run(config, paths, ...) -> dict``: the logic, called the same way by the CLI, KFP components
  and Airflow tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEP_MODULES = {
    "prep": "ampflow.steps.prep",
    "train": "ampflow.steps.train",
    "evaluate": "ampflow.steps.evaluate",
    "bench": "ampflow.steps.bench",
    "compare": "ampflow.steps.compare",
    "register": "ampflow.steps.register",
    "launch": "ampflow.steps.launch",
    "sync": "ampflow.steps.sync",
    "close-runs": "ampflow.steps.close_runs",
    "recipes": "ampflow.steps.recipes",
    "doctor": "ampflow.steps.doctor",
}


@dataclass(frozen=True)
class Paths:
    """Where a step reads and writes. Unused fields stay ``None``."""

    out: Path | None = None
    data: Path | None = None
    source: str | None = None  # a local path or an fsspec URI
    checkpoint: Path | None = None

    @staticmethod
    def of(**kw: str | Path | None) -> Paths:
        conv = {k: (None if v is None else (v if k == "source" else Path(v))) for k, v in kw.items()}
        return Paths(**conv)


def add_set_argument(parser: Any, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` option (collected into ``args.overrides``) every step spells
    the same way; ``parser`` is an argparse parser or argument group."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )

"""The champion gate: whether a comparison summary lets a candidate go on to ``ampflow register``.

Pure (no torch, no mlflow): the Airflow retrain DAG's ``passes`` task calls it in the scheduler's
venv. ``register`` still decides on its own whether the registered version becomes the champion.
"""

from __future__ import annotations

from typing import Any


def champion_gate(summary: Any) -> tuple[bool, str]:
    """``(passes, why)`` for a comparison summary (``ampflow.compare/1``): it passes when the
    comparison recommends a configuration and found no regression against earlier runs."""
    if not isinstance(summary, dict):
        return False, "no comparison summary"
    regressions = summary.get("regressions") or []
    if regressions:
        return False, f"regression against earlier runs: {regressions}"
    recommended = summary.get("recommended")
    if not recommended:
        return False, "no configuration passed the accuracy tolerance"
    return True, f"recommended {recommended}"

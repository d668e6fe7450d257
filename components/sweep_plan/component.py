"""KFP component: expand a benchmark sweep (precisions x compile modes x repeats) into ParallelFor items.

from components.sweep_plan import sweep_plan
plan = sweep_plan(precisions=["32-true", "bf16-mixed"], compile_modes=["off", "on"], repeats=3)
with dsl.ParallelFor(plan.output) as entry: ...   # entry.id, entry.precision, entry.compile
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from typing import List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def sweep_plan(
    precisions: List[str],  # noqa: UP006
    compile_modes: List[str] = ["off"],  # noqa: B006, UP006
    repeats: int = 1,
    baseline: str = "32-true",
) -> List[dict]:  # noqa: UP006
    """One item ``{id, precision, compile, repeat}`` per configuration and repeat, in ``ampflow bench``'s
    order (repeats interleave).

    compile_modes: ``off`` and/or ``on``. The sweep is parsed by ``ampflow.config.SweepSpec``, as
    ``ampflow bench`` and the Airflow DAG parse theirs; bad input (an unknown precision, a baseline
    not in `precisions`) fails here, before any GPU pod starts.
    """
    from ampflow.config import SweepSpec

    sweep = SweepSpec.from_lists(precisions, compile_modes, repeats, baseline)
    return [entry.to_dict() for entry in sweep.entries()]

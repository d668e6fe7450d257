"""KFP component: expand a benchmark sweep (precisions x compile modes x strategies x repeats) into ParallelFor items.

from components.sweep_plan import sweep_plan
plan = sweep_plan(precisions=["32-true", "bf16-mixed"], compile_modes=["off", "on"], repeats=3,
                  strategies=["single", "ddp"], nproc_per_node=8)
with dsl.ParallelFor(plan.output) as entry: ...   # entry.id, entry.precision, entry.compile, entry.strategy
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
    strategies: List[str] = ["single"],  # noqa: B006, UP006
    nproc_per_node: int = 2,
    num_nodes: int = 1,
    settings: List[str] = [],  # noqa: B006, UP006
    single_process_only: bool = False,
) -> List[dict]:  # noqa: UP006
    """One item ``{id, precision, compile, strategy, repeat}`` per configuration and repeat, in
    ``ampflow bench``'s order (repeats interleave, strategies innermost).

    compile_modes: ``off`` and/or ``on``; strategies: ampflow's strategies (every one but ``single``
    trains as a Kubeflow job of ``num_nodes`` x ``nproc_per_node`` GPUs). The sweep is parsed by
    ``ampflow.config.SweepSpec``, as ``ampflow bench`` and the Airflow DAG parse theirs, and the process
    count is checked by bench's rules (``ampflow.steps.bench.check_nproc``: at least 2 processes, each
    strategy's layout, its default mesh or a ``mesh=`` setting, covering them;
    ``ampflow.engine.mesh.resolve`` over several nodes). Bad input (an unknown precision or strategy,
    a baseline not in `precisions`, a layout that does not fit) fails here, before any GPU pod starts.
    ``single_process_only``: the pipeline was built for kfp.local, which trains one process only; a
    distributed strategy is refused.
    """
    from ampflow.config import ConfigError, SweepSpec, parse_overrides
    from ampflow.engine import mesh as meshes
    from ampflow.steps.bench import check_nproc

    sweep = SweepSpec.from_lists(precisions, compile_modes, repeats, baseline, strategies)
    distributed = [s for s in sweep.strategies if s != "single"]
    if distributed and single_process_only:
        raise ConfigError(
            f"the local kfp engine (kfp.local) trains single-process configurations only; strategies "
            f"{', '.join(distributed)} need the cluster's benchmark pipeline or `ampflow bench --engine local`"
        )
    mesh = parse_overrides(list(settings or [])).get("mesh")
    if distributed and num_nodes > 1:
        for strategy in sweep.strategies:
            meshes.resolve(strategy, mesh, num_nodes * nproc_per_node, nproc_per_node)
    else:
        check_nproc(sweep, nproc_per_node, mesh, names=("nproc_per_node", "strategies"))  # pipeline params
    # every item names its strategy: the pipeline's condition reads it ("single" trains in one pod)
    return [{**entry.to_dict(), "strategy": entry.strategy} for entry in sweep.entries()]

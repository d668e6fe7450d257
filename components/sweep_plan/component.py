"""KFP component: expand a benchmark's configurations and repeats into the ParallelFor items.

from components.sweep_plan import sweep_plan
plan = sweep_plan(configurations=["32-true", "bf16-mixed", "bf16-mixed+compile"], repeats=3)
with dsl.ParallelFor(plan.output) as entry: ...   # entry.id, entry.precision, entry.compile
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from typing import List  # noqa: UP035 - KFP reads these annotations

from kfp import dsl

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def sweep_plan(configurations: List[str], repeats: int = 1) -> List[dict]:  # noqa: UP006
    """One item per (configuration, repeat), in ``ampflow bench``'s order (repeats interleave).

    A configuration is a precision mode, with ``+compile`` for a torch.compile run
    (``bf16-mixed+compile``). Bad input fails here, before any GPU pod starts.
    """
    from ampflow.config import ConfigError, sweep_entries

    pairs = []
    for text in configurations:
        precision, _, flag = text.strip().partition("+")
        if flag not in ("", "compile"):
            raise ConfigError(f"configuration {text!r}: write PRECISION or PRECISION+compile")
        pairs.append((precision, flag == "compile"))
    if not pairs:
        raise ConfigError("configurations must list at least one configuration")
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"configurations lists a configuration twice: {configurations}")
    # sweep_entries validates and names each entry the way `ampflow bench` does
    per_config = [sweep_entries([p], [c], repeats) for p, c in pairs]
    return [
        {"id": entries[r].id, "precision": entries[r].precision, "compile": entries[r].compile}
        for r in range(repeats)
        for entries in per_config
    ]

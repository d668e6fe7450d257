"""The learning rate that goes with a global batch: ``lr_scaling = none | linear | sqrt``. Pure, torch-free.

The global batch of an optimizer step is ``batch_size x grad_accum`` samples (``batch_size`` is already
global in ampflow: the data-parallel ranks split it; a larger world size with ``batch_size=auto``
grows it). The rules:

- ``linear``: ``lr = base_lr x B / B_ref`` (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 2.1),
  the rule for SGD; it needs a warm-up, since the scaled rate is too large for the first steps (ibid.,
  sec. 2.2: gradual warm-up): ampflow's learning-rate warm-up (``lr_warmup_steps``, default 5% of the
  run) ramps to the scaled peak.
- ``sqrt``: ``lr = base_lr x sqrt(B / B_ref)`` (Krizhevsky 2014, "One weird trick", sec. 5; Malladi et
  al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms": the square-root rule for
  Adam-type optimizers, which ampflow's AdamW is).
- ``none``: the learning rate as given, whatever the batch (the default; ampflow's behaviour before).

``B_ref`` (``lr_reference_batch``) is the global batch the base learning rate was tuned at; unset, it
is the recipe's ``batch_size`` default (``RunConfig.resolve`` fills it in).
"""

from __future__ import annotations

import math
from typing import Any

from ampflow.config import LR_SCALING_RULES, ConfigError


def scale_factor(rule: str, global_batch: int, reference_batch: int) -> float:
    """The multiplier of the base learning rate for ``global_batch`` samples per step (dimensionless).

    Raises ConfigError for an unknown rule or a batch below 1.
    """
    if rule not in LR_SCALING_RULES:
        raise ConfigError(f"lr_scaling must be one of {', '.join(LR_SCALING_RULES)}; got {rule!r}")
    if global_batch < 1 or reference_batch < 1:
        raise ConfigError(f"lr_scaling: batches must be >= 1, got {global_batch} and {reference_batch}")
    ratio = global_batch / reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def resolve(rule: str, base_lr: float, global_batch: int, reference_batch: int | None) -> dict[str, Any]:
    """The resolved rule as result.json's ``lr_schedule`` carries it.

    Returns ``{"lr_scaling", "base_lr", "global_batch", "reference_batch", "lr_scale_factor", "peak_lr"}``;
    ``reference_batch`` None (rule ``none``) counts as the global batch itself.
    """
    ref = int(reference_batch) if reference_batch else int(global_batch)
    factor = scale_factor(rule, int(global_batch), ref)
    return {
        "lr_scaling": rule,
        "base_lr": float(base_lr),
        "global_batch": int(global_batch),
        "reference_batch": ref,
        "lr_scale_factor": factor,
        "peak_lr": float(base_lr) * factor,
    }

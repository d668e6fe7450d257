"""The optimizer (AdamW over the trainable parameters) and its learning-rate schedule.

The schedule's kind and warm-up come resolved from :meth:`ampflow.config.RunConfig.lr_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ampflow.config import RunConfig
from ampflow.engine import lr_scaling


def lr_lambda(total_steps: int, schedule: str, warmup: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then linear decay (or cosine) towards 0 at ``total_steps``.

    Returns the LR multiplier for a 0-based step, as ``LambdaLR`` wants; ``constant`` stays at 1.
    """

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "constant":
            return 1.0
        return max(0.0, 1.0 - progress)

    return f


def build_optimizer(model: Any, config: RunConfig, total_steps: int) -> tuple[Any, Any, dict[str, Any]]:
    """``(optimizer, scheduler, plan)`` for ``model``; ``plan`` is result.json's ``lr_schedule`` entry.

    ``config`` must be resolved (``learning_rate`` set, ``batch_size`` an int). The peak learning rate
    follows ``config.lr_scaling`` (:mod:`ampflow.engine.lr_scaling`); ``plan`` carries the resolved rule.
    """
    plan = lr_scaling.resolve(
        config.lr_scaling,
        float(config.learning_rate),
        int(config.batch_size) * config.grad_accum,
        config.lr_reference_batch,
    )
    lr = plan["peak_lr"]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=config.weight_decay
    )
    schedule, warm = config.lr_plan(total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, schedule, warm))
    return optimizer, scheduler, {"kind": schedule, "warmup_steps": warm, **plan}

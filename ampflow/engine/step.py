"""One optimizer step: ``grad_accum`` micro-batches of forward/backward, then unscale -> clip -> step.

Owns what happens between two optimizer steps and nothing else (no timing window, no logging), so
that the trainer and the batch-size search run the very same step.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ampflow.engine.precision import PrecisionPolicy

# a GradScaler-skipped step makes torch warn that the scheduler stepped before the optimizer: expected
warnings.filterwarnings(
    "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning
)


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many consecutive non-finite losses (exit 1, not bad input)."""


def loss_fn_of(recipe: Any) -> Any:
    """The recipe's ``loss(logits, labels)``, else cross-entropy computed in fp32 (a scalar tensor)."""
    if hasattr(recipe, "loss"):
        return recipe.loss

    def ce(logits: Any, labels: Any) -> Any:
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    return ce


def sync(device: Any) -> None:
    """Wait for queued CUDA work on ``device`` so a clock read measures it (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepOutcome:
    """What one optimizer step reports: mean micro-batch loss, whether the optimizer stepped (a
    GradScaler or a non-finite gradient may skip it), seconds spent gathering inputs, gradient norm."""

    loss: float
    stepped: bool
    data_s: float
    grad_norm: float | None


@dataclass
class Stepper:
    """One optimizer step over ``grad_accum`` micro-batches; shared by the trainer and the batch search.

    ``inputs`` are ``{name: (n, ...)}`` tensors and ``labels`` an ``(n,)`` tensor, all on ``device``;
    a call takes one index tensor per micro-batch and returns a :class:`StepOutcome`.
    """

    model: Any
    optimizer: Any
    scheduler: Any
    policy: PrecisionPolicy
    loss_fn: Any
    inputs: dict[str, Any]
    labels: Any
    device: Any
    clip: float | None
    grad_accum: int
    ddp: bool = False
    params: list[Any] = field(default_factory=list)
    # clip_grad_norm_(params, max_norm) -> norm; tensor parallelism sums its DTensor shards itself
    clip_fn: Any = None

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # index_select on a 2-D view is several times faster than on N-D tensors (images): rows are
        # gathered flat and viewed back to their shape
        self._flat = {k: (v.reshape(v.shape[0], -1), tuple(v.shape[1:])) for k, v in self.inputs.items()}

    def fetch(self, idx: Any) -> tuple[dict[str, Any], Any]:
        """The micro-batch at sample indices ``idx``: ``(inputs, labels)``."""
        inputs = {k: flat.index_select(0, idx).view(-1, *shape) for k, (flat, shape) in self._flat.items()}
        return inputs, self.labels.index_select(0, idx)

    def __call__(self, micro_indices: list[Any]) -> StepOutcome:
        data_s = 0.0
        loss_sum = None
        for i, idx in enumerate(micro_indices):
            t0 = time.perf_counter()
            inputs, labels = self.fetch(idx)
            data_s += time.perf_counter() - t0
            # DDP: all-reduce gradients only on the last micro-batch of an accumulation
            ctx = (
                self.model.no_sync() if self.ddp and i < len(micro_indices) - 1 else contextlib.nullcontext()
            )
            with ctx:
                with self.policy.autocast():
                    loss = self.loss_fn(self.model(**inputs), labels)
                self.policy.backward(loss / self.grad_accum if self.grad_accum > 1 else loss)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        self.policy.unscale(self.optimizer)
        norm = None
        clip_fn = self.clip_fn or torch.nn.utils.clip_grad_norm_
        if self.clip is not None:
            norm = clip_fn(self.params, self.clip)
        elif self.policy.scaler is None:
            # no clipping asked: still read the norm (max_norm=inf clips nothing) to refuse NaN updates
            norm = clip_fn(self.params, float("inf"))
        loss_val = float(loss_sum.float().item()) / len(micro_indices)
        norm_val = float(norm.item()) if norm is not None else None
        finite = math.isfinite(loss_val) and (norm_val is None or math.isfinite(norm_val))
        stepped = self.policy.step(self.optimizer, grads_finite=finite)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss_val, stepped, data_s, norm_val)

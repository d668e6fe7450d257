"""Validation during training, the training clock, and time to a target accuracy.

With ``val_every`` > 0 the trainer scores the prepared ``val`` split every ``val_every`` optimizer steps
and after the last step (:class:`Validator`), in eval mode, without gradients, under the run's autocast.
Each validation adds ``[step, train_clock_s, val_accuracy]`` to the validation curve; the first point at
or above ``target_accuracy`` gives ``steps_to_target`` and ``time_to_target_s``
(:class:`ValidationCurve`), and with ``stop_at_target`` the run ends there.

**The training clock** (:class:`TrainClock`), the clock ``time_to_target_s`` is read on, modelled on the
MLPerf Training rules (mlcommons/training_policies, ``training_rules.adoc``, "Benchmark timing"): time
to train runs from the start of training to the first evaluation that reaches the quality target, and
initialization before the first step is not timed. Precisely, in seconds of ``time.perf_counter``:

- it starts immediately before this process's first optimizer step (data loading, model build, the
  FLOP count, the batch-size search and checkpoint restore are initialization, untimed);
- it counts every optimizer step, the warm-up steps and a compiling first step included (a user pays
  for them on the way to the target), and the loop's own bookkeeping (logging, progress);
- it leaves out validation and checkpoint writes. This departs from MLPerf, which counts its (fixed)
  evaluation cadence: here the cadence is the user's measuring choice, so including it would make
  ``time_to_target_s`` depend on ``val_every`` and the size of the val split rather than on the
  configuration. Their seconds are reported apart (``validation_s``, ``checkpoint_s``);
- it is read at a validation after the step's device work has drained (CUDA synchronize), before the
  validation runs: the time the training took to produce the model that reached the target;
- across ``--resume`` it continues from the value the checkpoint saved, so steps redone after a kill
  count once and the restart's initialization not at all.

Under DDP/FSDP every rank scores its equal-sized shard of the val split and the correct counts are
summed across ranks (:func:`val_accuracy`), so every rank holds the same accuracy and takes the same
stop decision (a rank that stopped alone would leave the others waiting in a collective). A pipeline
scores the whole split through its stages (:meth:`ampflow.engine.pipeline.PipelineStepper.val_accuracy`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TrainClock:
    """The training clock (module docstring): seconds since :meth:`start`, plus ``offset_s``, less what
    :meth:`exclude` took out. ``clock`` is the time source (``time.perf_counter``; tests pass their own)."""

    def __init__(self, offset_s: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        self.offset_s, self.clock = float(offset_s), clock
        self.excluded_s = 0.0
        self._t0: float | None = None

    def start(self) -> None:
        """Start counting (only the first call counts: a clock is started once per process)."""
        if self._t0 is None:
            self._t0 = self.clock()

    def exclude(self, seconds: float) -> None:
        """Take ``seconds`` (validation, a checkpoint write) out of the clock."""
        self.excluded_s += seconds

    def seconds(self, now: float | None = None) -> float:
        """The clock's reading in seconds at ``now`` (a reading of ``clock``; default: now).

        Before :meth:`start` it reads ``offset_s`` (what an earlier process counted)."""
        if self._t0 is None:
            return self.offset_s
        return self.offset_s + ((self.clock() if now is None else now) - self._t0) - self.excluded_s


@dataclass
class ValidationCurve:
    """The validations of a run, ``points`` ``[[step, train_clock_s, val_accuracy], ...]`` in step order,
    against ``target`` (an accuracy fraction, or None: no target). ``points`` is the list the checkpoint
    saves (:class:`ampflow.engine.state.Progress`), shared, so a resumed run keeps its history."""

    target: float | None
    points: list[list[float]] = field(default_factory=list)

    def record(self, step: int, clock_s: float, accuracy: float) -> bool:
        """Add one validation; returns whether this one is the first to reach the target."""
        before = self.reached()
        self.points.append([int(step), float(clock_s), float(accuracy)])
        return before is None and self.reached() is not None

    def reached(self) -> list[float] | None:
        """The first point at or above the target (``[step, clock_s, accuracy]``); None when there is no
        target or no validation reached it. A non-finite accuracy never reaches it."""
        if self.target is None:
            return None
        return next((p for p in self.points if math.isfinite(p[2]) and p[2] >= self.target), None)

    def figures(self) -> dict[str, Any]:
        """result.json ``metrics`` keys: ``steps_to_target`` (optimizer steps, int), ``time_to_target_s``
        (training-clock seconds), both None when the target was never reached or not set (never 0 or
        -inf), and ``final_val_accuracy`` (the last validation's, None without one)."""
        hit = self.reached()
        last = self.points[-1][2] if self.points else None
        return {
            "steps_to_target": int(hit[0]) if hit else None,
            "time_to_target_s": float(hit[1]) if hit else None,
            "final_val_accuracy": last if last is not None and math.isfinite(last) else None,
        }


def due(step: int, total_steps: int, val_every: int) -> bool:
    """Whether a validation follows optimizer step ``step`` (1-based): every ``val_every`` steps and
    after the last (``total_steps``); never with ``val_every`` 0."""
    return bool(val_every) and (step % val_every == 0 or step >= total_steps)


def shard_indices(n: int, rank: int, world: int) -> tuple[Any, Any]:
    """This rank's examples of an ``n``-example split: ``(indices int64 [s], valid bool [s])`` with
    ``s = ceil(n / world)`` on every rank, so each rank runs the same number of forward calls (FSDP
    gathers parameters collectively in each). Rank ``r`` takes the contiguous ``[r*s, (r+1)*s)``; the
    positions past ``n`` wrap to the start and are marked invalid (scored, never counted)."""
    import torch

    s = -(-n // world)
    idx = torch.arange(rank * s, (rank + 1) * s, dtype=torch.int64)
    return idx % n, idx < n


def val_accuracy(
    model: Any,
    inputs: dict[str, Any],
    labels: Any,
    *,
    policy: Any,
    batch_size: int,
    rank: int,
    world: int,
    device: Any,
) -> float:
    """The accuracy (fraction) of ``model`` on a split held as tensors (``inputs`` ``{name: [n, ...]}``,
    ``labels`` int64 ``[n]``, on ``device``), every rank scoring its :func:`shard_indices` in batches
    of ``batch_size`` under ``policy.autocast()``, the counts summed over ranks (each shard once when
    several ranks, a tensor group, score it): the same value on every rank. The model is switched to
    eval mode for the pass and back to its previous mode after. The output must be logits
    ``[batch, classes]`` (or carry ``.logits``)."""
    import torch

    from ampflow.engine import parallel

    n = int(labels.shape[0])
    idx, valid = shard_indices(n, rank, world)
    idx, valid = idx.to(labels.device), valid.to(labels.device)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for lo in range(0, len(idx), batch_size):
                sel, ok = idx[lo : lo + batch_size], valid[lo : lo + batch_size]
                with policy.autocast():
                    out = model(**{k: v.index_select(0, sel) for k, v in inputs.items()})
                logits = out if isinstance(out, torch.Tensor) else out.logits
                hits = (logits.float().argmax(dim=1) == labels.index_select(0, sel)) & ok
                correct += int(hits.sum().item())
    finally:
        model.train(was_training)
    total = parallel.all_reduce([float(correct)], "sum", device)[0]
    # the sum runs over every rank; under tp / fsdp+tp the ranks of one tensor group score the same
    # shard (``world`` counts the data-parallel ranks only): count each shard once
    copies = max(1, parallel.current().world_size // world)
    return total / copies / n


class Validator:
    """What the trainer needs for validation: the val split on the device, the curve, the clock.

    ``config``: the run's RunConfig (``val_every``, ``target_accuracy``, ``stop_at_target``,
    ``eval_batch_size``); ``progress``: the checkpointed :class:`ampflow.engine.state.Progress` whose
    ``val_curve`` and ``train_clock_s`` a resumed run continues. The split is loaded only when
    ``val_every`` > 0; a dataset without a (non-empty) ``val`` split then raises ConfigError.
    """

    def __init__(
        self, config: Any, data_dir: Any, device: Any, policy: Any, rank: int, world: int, progress: Any
    ):
        from ampflow.data.splits import load_tensors

        self.config, self.device, self.policy, self.rank, self.world = config, device, policy, rank, world
        self.every = int(config.val_every)
        self.curve = ValidationCurve(config.target_accuracy, progress.val_curve)
        self.clock = TrainClock(progress.train_clock_s)
        self.seconds = 0.0  # validation seconds in this process
        # how a model is scored: val_accuracy's contract (a pipeline passes its own, across stages)
        self.score: Callable[..., float] = val_accuracy
        self.inputs, self.labels = (None, None)
        if self.every:
            self.inputs, self.labels = load_tensors(data_dir, "val", device, policy)

    def due(self, step: int, total_steps: int) -> bool:
        """Whether a validation follows step ``step`` (:func:`due`)."""
        return due(step, total_steps, self.every)

    def stop(self) -> bool:
        """Whether the run should end now: ``stop_at_target`` and the target reached (the same on every
        rank: the accuracies are all-reduced)."""
        return bool(self.config.stop_at_target) and self.curve.reached() is not None

    def run(self, model: Any, step: int, clock_s: float) -> float:
        """Validate ``model`` after step ``step`` at training-clock ``clock_s``; returns the accuracy."""
        t0 = time.perf_counter()
        acc = self.score(
            model,
            self.inputs,
            self.labels,
            policy=self.policy,
            batch_size=self.config.eval_batch_size,
            rank=self.rank,
            world=self.world,
            device=self.device,
        )
        self.seconds += time.perf_counter() - t0
        self.curve.record(step, clock_s, acc)
        return acc

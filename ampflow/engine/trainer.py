"""The trainer: one model, one precision mode, honest figures.

Built by ``ampflow.steps.train.run`` from a resolved, validated RunConfig. The shape of a run:

1. seed everything, load the prepared train split into tensors on the device once;
2. build the model, convert it for the precision mode, choose the batch size (``auto`` searches);
3. count FLOPs per sample on a copy, wrap for DDP / FSDP2, compile when asked, restore a checkpoint;
4. :meth:`Trainer.fit`: a seeded per-epoch permutation is the data order (the same for every
   precision and for 1 or N processes), :meth:`Trainer.train_step` per optimizer step, checkpoints;
5. time only the steady state (:mod:`ampflow.engine.throughput`) and assemble ``result.json``.

The parts live beside it: the optimizer step (:mod:`.step`), optimizer and LR schedule (:mod:`.optim`),
checkpointed state per strategy (:mod:`.state`), the throughput window (:mod:`.throughput`), the
batch-size search (:mod:`.autobatch`) and what model logging gets (:mod:`.export`).
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ampflow import __version__
from ampflow.config import ConfigError, RunConfig
from ampflow.data.loading import TrainData
from ampflow.data.manifest import dataset_hash, dataset_info, read_manifest
from ampflow.engine import autobatch, checkpoint, comms, energy, parallel
from ampflow.engine.console import ProgressLog
from ampflow.engine.devices import bf16_native, device_name
from ampflow.engine.export import example_input, exportable_model
from ampflow.engine.metrics import flops_per_sample
from ampflow.engine.optim import build_optimizer
from ampflow.engine.peaks import check_mfu, resolve_peak
from ampflow.engine.precision import PrecisionPolicy
from ampflow.engine.state import TrainState, wrap_and_restore
from ampflow.engine.step import NonFiniteLossError, Stepper, loss_fn_of, sync
from ampflow.engine.throughput import ThroughputWindow
from ampflow.engine.validation import Validator

RESULT_SCHEMA = "ampflow.train.result/1"
# samples of the first batch the FLOP count runs on (a per-sample figure: more adds nothing)
FLOPS_PROBE_SAMPLES = 32


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


class Trainer:
    """Everything one training run needs, set up on construction; :meth:`fit` trains.

    ``config`` must be resolved (:meth:`RunConfig.resolve`): ``batch_size`` an int or ``"auto"``,
    ``learning_rate`` set. ``resume_state`` is a loaded checkpoint to continue, or None.
    Construction raises ConfigError when the batch size does not fit the data or the world size.
    """

    def __init__(
        self,
        config: RunConfig,
        recipe: Any,
        data_dir: Path,
        run_dir: Path,
        *,
        policy: PrecisionPolicy,
        device: Any,
        dist_info: parallel.DistInfo,
        tracker: Any,
        resume_state: dict[str, Any] | None = None,
    ):
        self.wall0 = time.perf_counter()
        self.config, self.recipe, self.policy = config, recipe, policy
        self.device, self.tracker = device, tracker
        self.rank, self.world, self.is_main = dist_info.rank, dist_info.world_size, dist_info.is_main
        # ranks that read different samples: the whole world, or the mesh's dp dimension (tp, pp, fsdp+tp)
        self.dist, self.dp_rank, self.dp_world = dist_info, dist_info.dp_rank, dist_info.dp_size
        self.resumed = resume_state is not None
        manifest = read_manifest(data_dir)
        self.data_hash, self.info = dataset_hash(manifest), dataset_info(manifest)
        self.matmul_precision = policy.setup()

        seed_everything(config.seed)
        # in memory or streamed (data_loading), bucket-padded or not (pad_to): see ampflow.data.loading
        self.data = TrainData(data_dir, config, recipe, device, policy)
        self.inputs, self.labels, self.n = self.data.inputs, self.data.labels, self.data.n
        model = self._build_model()
        self.loss_fn = loss_fn_of(recipe)
        if self.dp_rank:
            # same initial weights on every rank (seeded above), but independent dropout masks per
            # data-parallel rank (a tensor group must draw the same masks for its replicated activations)
            torch.manual_seed(config.seed + 1000 * self.dp_rank)
        self._choose_batch_size(model)
        self.flops_per_sample = self._count_flops(model)

        self.model = wrap_and_restore(
            model, config.strategy, policy, device, resume_state, dist_info, recipe, config.sequence_parallel
        )
        self.state = self._build_state(run_dir, resume_state)
        self.stepper = self._build_stepper()
        self.pos = self.state.progress.pos
        self.start_step = self.pos.step
        self.order = self.data.make_order(self.batch_size, config.seed, self.dp_rank, self.dp_world, self.pos)
        skip = config.warmup_steps + (1 if config.compile else 0)
        # the steps right after warm-up are profiled for comm_time_share and left out of the window
        self.comm = comms.CommProbe(
            config.strategy,
            self.world,
            device,
            config.comm_profile_steps,
            skip,
            self.total_steps - self.start_step,
        )
        self.window = ThroughputWindow(device, skip + self.comm.steps, config.compile)
        self.last_loss = math.nan
        self.checkpoint_s = 0.0
        # validation on the val split and the training clock time to target is read on (.validation)
        self.val = Validator(
            self.config, data_dir, device, policy, self.dp_rank, self.dp_world, self.state.progress
        )
        if hasattr(self.stepper, "val_accuracy"):  # a pipeline scores through its stages
            self.val.score = self.stepper.val_accuracy
        self.energy = energy.meter_for(device, dist_info.local_rank)

    # -- set-up -------------------------------------------------------------------------------

    def _build_model(self) -> Any:
        model = self.policy.convert_model(self.recipe.build_model(self.info).to(self.device))
        # from_pretrained() hands back submodules in eval mode: dropout would silently stay off
        model.train()
        return model

    def _choose_batch_size(self, model: Any) -> None:
        """Fix the global micro-batch, the steps of the run and the resolved config."""
        c, world = self.config, self.dp_world
        self.search_report = None
        batch_size = c.batch_size
        if batch_size == "auto":
            batch_size, self.search_report = autobatch.search_batch_size(
                c, model, self.inputs, self.labels, self.loss_fn, self.policy, self.device, world
            )
        self.batch_size = int(batch_size)
        if self.batch_size % world:
            raise ConfigError(
                f"batch_size {self.batch_size} must be a multiple of the data-parallel size {world}"
            )
        self.per_step = self.batch_size * c.grad_accum
        if self.per_step > self.n:
            raise ConfigError(
                f"batch_size {self.batch_size} x grad_accum {c.grad_accum} exceeds the {self.n} training examples"
            )
        self.total_steps = c.total_steps(self.n // self.per_step)
        self.config = c.replace(batch_size=self.batch_size) if c.batch_size != self.batch_size else c

    def _count_flops(self, model: Any) -> dict[int | None, float | None]:
        """FLOPs per sample per padded length (``{None: f}`` under fixed padding), on a copy of the
        unwrapped model with the first samples of the run."""
        k = min(self.batch_size // self.dp_world, FLOPS_PROBE_SAMPLES)
        return {
            pad: flops_per_sample(
                model, *self.data.probe(self.config.seed, k, pad), self.loss_fn, self.policy.autocast
            )
            for pad in self.data.pad_lengths()
        }

    def _build_state(self, run_dir: Path, resume_state: dict[str, Any] | None) -> TrainState:
        """Optimizer and LR schedule for the wrapped model, restored from ``resume_state`` when given."""
        optimizer, scheduler, self.lr_plan = build_optimizer(self.model, self.config, self.total_steps)
        state = TrainState(
            checkpoint.checkpoint_path(run_dir),
            self.model,
            optimizer,
            scheduler,
            self.policy,
            self.config,
            getattr(self.recipe, "name", self.config.recipe),
            self.data_hash,
            self.is_main,
        )
        state.restore(resume_state)
        return state

    def _build_stepper(self) -> Stepper:
        c = self.config
        stepper = parallel.make_stepper(
            c.strategy,
            self.dist,
            c.pp_schedule,
            torch.compile(self.model) if c.compile else self.model,
            self.state.optimizer,
            self.state.scheduler,
            self.policy,
            self.loss_fn,
            self.inputs,
            self.labels,
            self.device,
            c.clip_grad_norm,
            c.grad_accum,
            ddp=c.strategy == "ddp",
        )
        # clip the real parameters, not the compiled wrapper's view of them
        stepper.params = [p for p in self.model.parameters() if p.requires_grad]
        # micro-batches are (epoch, start) refs, served in memory or streamed (ampflow.data.loading)
        stepper.fetch = self.data.fetch
        return stepper

    # -- training -----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns ``{"result", "model", "example"}``.

        ``result`` is the result.json dict (the caller writes it on rank 0), ``model`` a plain module for
        logging (None on other FSDP ranks), ``example`` an input example. Raises NonFiniteLossError on
        divergence; every rank must call.
        """
        # progress lines mark the steps the throughput window leaves out (the summary's samples/s)
        timed_after = self.start_step + self.window.skip
        log = ProgressLog(self.total_steps, self.start_step, self.config.log_every, self.is_main, timed_after)
        if self.config.compile and self.is_main and self.start_step < self.total_steps:
            # the first step can take minutes without a line otherwise (inductor on a CPU)
            print(
                f"step {self.start_step + 1}: compiling the model (torch.compile; reported as compile_s, "
                "outside the timed window)",
                flush=True,
            )
        self.val.clock.start()
        self.data.start((self.total_steps - self.pos.step) * self.config.grad_accum)
        try:
            # stop() is the same on every rank (the val accuracy is all-reduced)
            while self.pos.step < self.total_steps and not self.val.stop():
                local_step = self.pos.step - self.start_step
                timed = self.window.timed(local_step)
                if timed:
                    self.energy.resume()  # no-op once running: energy covers the timed window
                starts = [self.order.next_global() for _ in range(self.config.grad_accum)]
                with self.comm.around(local_step, self.pos.step + 1):
                    loss, dt = self.train_step(starts, local_step, timed)
                self._report(loss, dt, log)
                self.window.close_step(timed, checkpoint_s=self._between_steps())
                self.energy.tick()
        finally:
            log.close()
            self.comm.close()
            self.energy.pause()
            self.data.close()
        memory = self.window.memory()
        self.state.progress.train_clock_s = self.val.clock.seconds()
        full_state = self.state.save(finished=True)
        model = exportable_model(
            self.model,
            strategy=self.config.strategy,
            is_main=self.is_main,
            rebuild=lambda: self.policy.convert_model(self.recipe.build_model(self.info)),
            full_state=full_state,
            load_saved=self.state.load_final_weights,
        )
        return {"result": self._result(memory), "model": model, "example": example_input(self.inputs)}

    def train_step(self, starts: list[tuple[int, int]], local_step: int, timed: bool) -> tuple[float, float]:
        """One optimizer step over the global micro-batches ``starts``: ``(loss, seconds)``.

        The loss is the mean over ranks. Raises NonFiniteLossError after ``max_nonfinite_steps``
        non-finite losses in a row.
        """
        micro = list(starts)
        self.window.clock_start()
        out = self.stepper(micro)
        dt = self.window.clock_stop()
        self.pos.step += 1
        self.window.record(local_step, timed, dt, out.data_s, starts)
        loss = out.loss
        if self.world > 1:
            loss = parallel.all_reduce([loss], "sum", self.device)[0] / self.world
        self._check_finite(loss)
        return loss, dt

    def _check_finite(self, loss: float) -> None:
        progress, c = self.state.progress, self.config
        self.last_loss = loss
        progress.loss_curve.append([self.pos.step, loss])
        progress.nonfinite_run = 0 if math.isfinite(loss) else progress.nonfinite_run + 1
        if progress.nonfinite_run >= c.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"training diverged: {progress.nonfinite_run} consecutive non-finite losses at step {self.pos.step} "
                f"(precision {c.precision}, max_nonfinite_steps={c.max_nonfinite_steps}); "
                "lower learning_rate, enable clipping, or use bf16-mixed / 32-true"
            )

    def _report(self, loss: float, dt: float, log: ProgressLog) -> None:
        lr = self.state.scheduler.get_last_lr()[0]
        scale = self.policy.loss_scale()
        sps = self.per_step / dt if dt > 0 else None
        if self.is_main:
            m = {"loss": loss, "lr": lr, "step_time_s": dt}
            if sps:
                m["samples_per_s"] = sps
            if scale is not None:
                m["loss_scale"] = scale
            self.tracker.log_metrics(m, step=self.pos.step)
        log.update(self.pos.step, loss, lr, sps, scale)

    def _between_steps(self) -> float:
        """The validation and the periodic checkpoint due after this step; returns their seconds, which the
        throughput window (as checkpoint time), the training clock and the energy meter all leave out."""
        step = self.pos.step
        validate = self.val.due(step, self.total_steps)
        if not (validate or self._checkpoint_due()):
            return 0.0
        with self.energy.paused():
            sync(self.device)
            t0 = time.perf_counter()
            clock_s = self.val.clock.seconds(t0)
            if validate:
                acc = self.val.run(parallel.unwrap(self.model), step, clock_s)
                if self.is_main:
                    self.tracker.log_metrics({"val_accuracy": acc, "train_clock_s": clock_s}, step=step)
            self.state.progress.train_clock_s = clock_s
            self._periodic_checkpoint()
            seconds = time.perf_counter() - t0
        self.val.clock.exclude(seconds)
        return seconds

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return bool(every) and not self.pos.step % every and self.pos.step < self.total_steps

    def _periodic_checkpoint(self) -> float:
        """Write the every-``checkpoint_every``-steps checkpoint when one is due; returns its seconds."""
        if not self._checkpoint_due():
            return 0.0
        t0 = time.perf_counter()
        self.state.save(finished=False)
        seconds = time.perf_counter() - t0
        self.checkpoint_s += seconds
        return seconds

    # -- the result ---------------------------------------------------------------------------

    def _result(self, memory: Any) -> dict[str, Any]:
        c, w, device = self.config, self.window, self.device
        tokens = self.data.count_tokens(self.recipe, w.batches) if self.is_main else 0
        if not w.step_times and self.is_main:
            print(
                f"ampflow train: no step was timed ({self.pos.step - self.start_step} steps run, warmup_steps="
                f"{c.warmup_steps}{', plus the compiling step' if c.compile else ''}); speed and memory "
                "figures are empty: run longer (max_steps or epochs) or lower warmup_steps",
                file=sys.stderr,
            )
        # MFU's denominator: the peak_flops setting, the vendor table, else a cached matmul probe (rank 0
        # measures; the probe's seconds are not training and stay out of train_wall_s)
        probe_t0 = time.perf_counter()
        peak = resolve_peak(device, self.policy.spec.compute, c.peak_flops, probe=self.is_main)
        probe_s = time.perf_counter() - probe_t0
        peak_fs = peak.flops
        metrics = w.figures(
            batch_size=self.batch_size,
            world=self.world,
            tokens=tokens,
            # under bucketing the mean over the timed batches' padded lengths
            flops_per_sample=self.data.mean_over(self.flops_per_sample, w.batches),
            peak_flops=peak_fs,
            memory=memory,
            device=device,
        )
        metrics.update(
            final_train_loss=self.last_loss if math.isfinite(self.last_loss) else None,
            loss_scale=self.policy.loss_scale(),
            skipped_steps=self.policy.skipped_steps,
            steps=self.pos.step,
            batch_size=self.batch_size,
            train_wall_s=time.perf_counter() - self.wall0 - probe_s,
            checkpoint_s=self.checkpoint_s,
            validation_s=self.val.seconds,
            mfu_peak_flops=peak_fs,
            global_batch_size=self.per_step,
            lr_peak=self.lr_plan["peak_lr"],
            lr_scale_factor=self.lr_plan["lr_scale_factor"],
            **(self.stepper.figures() if hasattr(self.stepper, "figures") else {}),
        )
        if self.is_main:
            # an MFU above 1 is impossible: a stale probe is re-measured, anything else is not reported
            metrics["mfu"], peak, mfu_note = check_mfu(metrics.get("mfu"), peak, device)
            peak_fs = metrics["mfu_peak_flops"] = peak.flops
            if mfu_note:
                print(f"ampflow train: {mfu_note}", file=sys.stderr)
        metrics.update(self.val.curve.figures())
        comm_metrics, comm_info = self.comm.figures()
        metrics.update(comm_metrics)
        energy_info = self._energy(metrics)
        metrics.update(
            energy.cost_figures(
                c.price_per_device_hour,
                devices=self.world,
                train_wall_s=metrics["train_wall_s"],
                samples_per_s=metrics.get("samples_per_s"),
                time_to_target_s=metrics["time_to_target_s"],
            )
        )
        return {
            "schema": RESULT_SCHEMA,
            "status": "ok",
            "recipe": c.recipe,
            "config": c.to_dict(),
            "precision": c.precision,
            "compile": c.compile,
            "strategy": c.strategy,
            "world_size": self.world,
            "mesh": self.dist.layout.text() if self.dist.layout is not None else None,
            "device": device.type,
            "device_name": device_name(device),
            "bf16_emulated": bool(self.policy.is_bf16 and not bf16_native(device)),
            "fp32_matmul_precision": self.matmul_precision,
            "torch_version": torch.__version__,
            "ampflow_version": __version__,
            "dataset_hash": self.data_hash,
            "train_examples": self.n,
            "data_loading": self.data.mode,
            "epochs_seen": self.pos.epoch + (1 if self.pos.index else 0),
            "lr_schedule": self.lr_plan,
            "resumed_from_step": self.start_step if self.resumed else None,
            "memory_kind": memory.kind
            if memory
            else ("cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"),
            "peak_flops_per_device": peak_fs,
            "mfu_peak_flops": peak_fs,
            "mfu_peak_source": peak.source,
            "mfu_peak_detail": peak.detail,
            "metrics": metrics,
            "batch_size_search": self.search_report,
            "loss_curve": self.state.progress.loss_curve,
            "val_curve": self.state.progress.val_curve,
            "stopped_at_target": bool(c.stop_at_target and self.val.curve.reached() is not None),
            "energy": energy_info,
            # how comm_time_share was measured, on which steps, or why it is null (ampflow.engine.comms)
            "comm": comm_info,
            "checkpoint": str(self.state.path),
            # what checkpoint_format=auto chose: one gathered file, or DCP shards beside it
            "checkpoint_format": "sharded" if self.config.sharded_checkpoints else "full",
        }

    def _energy(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Add ``energy_j`` / ``joules_per_sample`` (every rank's joules summed) to ``metrics``; returns
        result.json's ``energy`` ``{source, domains, reason}`` (reason: why the figures are null).
        Collective: every rank calls."""
        meter = self.energy
        own = meter.joules
        total, missing = parallel.all_reduce([own or 0.0, 1.0 if own is None else 0.0], "sum", self.device)
        joules, reason = (total, None) if not missing else (None, meter.reason)
        if missing and reason is None:
            reason = f"no energy counter readable on {int(missing)} of the {self.world} ranks"
        if joules is not None and not self.window.step_times:
            joules, reason = None, "no step was timed"
        metrics.update(energy.energy_figures(joules, len(self.window.batches) * self.batch_size))
        counter = meter.counter
        return {
            "source": meter.source if joules is not None else None,
            "domains": list(counter.domains) if counter is not None and joules is not None else [],
            "reason": reason,
        }

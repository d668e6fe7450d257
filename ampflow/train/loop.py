"""The training loop: one model, one precision mode, honest figures.

Called by ``ampflow.steps.train.run``; see that module for the command line. The shape of a run:

1. seed everything, load the prepared train split into tensors on the device once;
2. build the model, convert it for the precision mode, choose the batch size (``auto`` searches);
3. count FLOPs per sample on a copy, wrap for DDP / FSDP2, compile when asked, restore a checkpoint;
4. train: a seeded per-epoch permutation is the data order (the same for every precision and for 1 or N
   processes), gradient accumulation, unscale -> clip -> step, LR schedule, checkpoints;
5. time only the steady state (after ``warmup_steps`` and the compiling step), synchronising CUDA
   before every clock read, data fetch timed apart; peak memory over the timed window.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ampflow import __version__
from ampflow.config import ConfigError, RunConfig
from ampflow.dataset import load_split, read_manifest
from ampflow.train import autobatch, checkpoint, parallel
from ampflow.train.devices import MemoryMeter, bf16_native, device_name, peak_flops
from ampflow.train.metrics import dynamo_graph_count, flops_per_sample, step_time_stats
from ampflow.train.precision import PrecisionPolicy

# a GradScaler-skipped step makes torch warn that the scheduler stepped before the optimizer: expected
warnings.filterwarnings(
    "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning
)

RESULT_SCHEMA = "ampflow.train.result/1"
AUTO_BATCH_START = 8
AUTO_BATCH_TRIAL_STEPS = 3


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many consecutive non-finite losses (exit 1, not bad input)."""


# -- data ---------------------------------------------------------------------------------------


def dataset_hash(manifest: dict[str, Any]) -> str | None:
    return manifest.get("content_hash") or manifest.get("hash")


def dataset_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """What featurize returned, passed back to build_model."""
    info = manifest.get("info")
    if info is None:
        info = manifest.get("recipe_info", {})
    return dict(info or {})


def label_names(manifest: dict[str, Any], num_classes: int) -> list[str]:
    for key in ("label_names", "labels", "classes"):
        names = manifest.get(key)
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def check_dataset_recipe(manifest: dict[str, Any], config: RunConfig, recipe: Any, data_dir: Any) -> None:
    prepared_by = manifest.get("recipe")
    if prepared_by and prepared_by not in {config.recipe, getattr(recipe, "name", None)}:
        raise ConfigError(
            f"--data {data_dir} was prepared by recipe {prepared_by!r}, not {config.recipe!r}; "
            f"prep it with --recipe {config.recipe} or pass --recipe {prepared_by}"
        )


def load_tensors(
    data_dir: Any, split: str, device: Any, policy: PrecisionPolicy, limit: int = 0
) -> tuple[dict[str, Any], Any]:
    """One split as tensors on ``device`` (copied once): ``(inputs, labels)``."""
    arrays = load_split(data_dir, split)
    if "labels" not in arrays:
        raise ConfigError(f"--data {data_dir}: split {split!r} has no labels array")
    n = len(arrays["labels"])
    if limit:
        n = min(n, limit)
    if n == 0:
        raise ConfigError(f"--data {data_dir}: split {split!r} is empty")
    out = {}
    for name, arr in arrays.items():
        # a private writable copy: the split is memory-mapped read-only
        out[name] = torch.from_numpy(np.array(arr[:n], copy=True))
    labels = out.pop("labels").to(torch.long).to(device)
    inputs = {k: policy.convert_input(v.to(device)) for k, v in out.items()}
    return inputs, labels


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of one epoch: depends only on (seed, epoch), so resume and every config agree."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


# -- schedule -----------------------------------------------------------------------------------


def lr_lambda(total_steps: int, schedule: str, warmup: int):
    """Linear warm-up over ``warmup`` steps, then linear decay (or cosine) towards 0 at ``total_steps``."""

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


def schedule_of(config: RunConfig, recipe: Any, total_steps: int) -> tuple[str, int]:
    # RunConfig has no schedule fields yet: a recipe may set ``schedule`` / ``lr_warmup_steps``
    schedule = getattr(config, "lr_schedule", None) or getattr(recipe, "schedule", "linear")
    if schedule not in {"linear", "cosine", "constant"}:
        raise ConfigError(f"lr schedule must be linear, cosine or constant; got {schedule!r}")
    warm = getattr(config, "lr_warmup_steps", None)
    if warm is None:
        warm = getattr(recipe, "lr_warmup_steps", None)
    if warm is None:
        warm = max(1, total_steps // 20)
    return schedule, int(min(warm, total_steps))


# -- the step -----------------------------------------------------------------------------------


def loss_fn_of(recipe: Any):
    if hasattr(recipe, "loss"):
        return recipe.loss

    def ce(logits: Any, labels: Any) -> Any:
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    return ce


def sync(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepOutcome:
    loss: float
    stepped: bool
    data_s: float
    grad_norm: float | None


@dataclass
class Stepper:
    """One optimizer step over ``grad_accum`` micro-batches; shared by the loop and the batch search."""

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

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # index_select on a 2-D view is several times faster than on N-D tensors (images): rows are
        # gathered flat and viewed back to their shape
        self._flat = {k: (v.reshape(v.shape[0], -1), tuple(v.shape[1:])) for k, v in self.inputs.items()}

    def fetch(self, idx: Any) -> tuple[dict[str, Any], Any]:
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
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        elif self.policy.scaler is None:
            # no clipping asked: still read the norm (max_norm=inf clips nothing) to refuse NaN updates
            norm = torch.nn.utils.clip_grad_norm_(self.params, float("inf"))
        loss_val = float(loss_sum.float().item()) / len(micro_indices)
        norm_val = float(norm.item()) if norm is not None else None
        finite = math.isfinite(loss_val) and (norm_val is None or math.isfinite(norm_val))
        stepped = self.policy.step(self.optimizer, grads_finite=finite)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss_val, stepped, data_s, norm_val)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    index: int = 0  # next global sample position in this epoch's permutation


class DataOrder:
    """Global micro-batches from the seeded permutation; each rank takes its slice of each."""

    def __init__(self, n: int, batch: int, seed: int, rank: int, world: int, device: Any, pos: Position):
        self.n, self.batch, self.seed = n, batch, seed
        self.local = batch // world
        self.lo = rank * self.local
        self.device = device
        self.pos = pos
        self._perm_epoch = -1
        self._perm = None

    def _perm_for(self, epoch: int) -> Any:
        if self._perm_epoch != epoch:
            self._perm = torch.from_numpy(epoch_permutation(self.seed, epoch, self.n)).to(self.device)
            self._perm_epoch = epoch
        return self._perm

    def next_global(self) -> tuple[int, int]:
        """Advance the position by one global micro-batch; returns (epoch, start) of that batch."""
        if self.pos.index + self.batch > self.n:  # drop the last partial batch: fixed shapes
            self.pos.epoch += 1
            self.pos.index = 0
        start = (self.pos.epoch, self.pos.index)
        self.pos.index += self.batch
        return start

    def local_indices(self, epoch: int, start: int) -> Any:
        perm = self._perm_for(epoch)
        return perm[start + self.lo : start + self.lo + self.local]

    def global_indices(self, epoch: int, start: int) -> np.ndarray:
        return epoch_permutation(self.seed, epoch, self.n)[start : start + self.batch]


class _Progress:
    """tqdm on a terminal, plain log lines every ``log_every`` steps otherwise; rank 0 only."""

    def __init__(self, total: int, initial: int, log_every: int, enabled: bool):
        self.total, self.log_every, self.enabled = total, log_every, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, sps: float | None, scale: float | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
            if sps:
                post["samples/s"] = f"{sps:.0f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif step % self.log_every == 0 or step == self.total:
            extra = f" scale {scale:g}" if scale is not None else ""
            rate = f" {sps:.0f} samples/s" if sps else ""
            print(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.3e}{rate}{extra}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
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
) -> dict[str, Any]:
    """Train; returns the result dict (the caller writes result.json on rank 0)."""
    wall0 = time.perf_counter()
    rank, world = dist_info.rank, dist_info.world_size
    main = dist_info.is_main
    manifest = read_manifest(data_dir)
    data_hash = dataset_hash(manifest)
    matmul_precision = policy.setup()

    seed_everything(config.seed)
    inputs, labels = load_tensors(data_dir, "train", device, policy, config.limit_train_samples)
    n = int(labels.shape[0])
    info = dataset_info(manifest)
    model = recipe.build_model(info).to(device)
    model = policy.convert_model(model)
    # from_pretrained() hands back submodules in eval mode: dropout would silently stay off
    model.train()
    loss_fn = loss_fn_of(recipe)
    if rank:
        # same initial weights on every rank (seeded above), but independent dropout masks per rank
        torch.manual_seed(config.seed + 1000 * rank)

    # -- batch size ------------------------------------------------------------------------------
    search_report = None
    batch_size = config.batch_size if config.batch_size is not None else 32
    if batch_size == "auto":
        batch_size, search_report = _auto_batch(config, model, inputs, labels, loss_fn, policy, device, world)
    batch_size = int(batch_size)
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} must be a multiple of the world size {world}")
    per_step = batch_size * config.grad_accum
    if per_step > n:
        raise ConfigError(
            f"batch_size {batch_size} x grad_accum {config.grad_accum} exceeds the {n} training examples"
        )
    steps_per_epoch = n // per_step
    total_steps = config.max_steps or (config.epochs or 1) * steps_per_epoch
    resolved = config.replace(batch_size=batch_size)

    # -- FLOPs, on a copy of the unwrapped model with the first batch ------------------------------
    probe_idx = torch.from_numpy(epoch_permutation(config.seed, 0, n)[: min(batch_size // world, 32)]).to(
        device
    )
    fps = flops_per_sample(
        model,
        {k: v.index_select(0, probe_idx) for k, v in inputs.items()},
        labels.index_select(0, probe_idx),
        loss_fn,
        policy.autocast,
    )

    # -- restore, wrap, compile, optimizer ---------------------------------------------------------
    pos = Position()
    progress_state: dict[str, Any] = {"loss_curve": [], "nonfinite_run": 0}
    if resume_state is not None and config.strategy != "fsdp":
        model.load_state_dict(resume_state["model"])
    model = parallel.wrap(model, config.strategy, policy, device)
    if resume_state is not None and config.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, resume_state["model"], options=StateDictOptions(full_state_dict=True))
    train_model = torch.compile(model) if config.compile else model
    lr = float(config.learning_rate or 1e-3)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=config.weight_decay
    )
    schedule, lr_warm = schedule_of(config, recipe, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, schedule, lr_warm))
    if resume_state is not None:
        _load_optimizer(optimizer, model, resume_state["optimizer"], config.strategy)
        scheduler.load_state_dict(resume_state["scheduler"])
        policy.load_state_dict(resume_state["precision"])
        pos = Position(int(resume_state["step"]), int(resume_state["epoch"]), int(resume_state["index"]))
        progress_state = dict(resume_state.get("progress") or progress_state)
        checkpoint.set_rng_state(resume_state["rng"])

    stepper = Stepper(
        train_model,
        optimizer,
        scheduler,
        policy,
        loss_fn,
        inputs,
        labels,
        device,
        config.clip_grad_norm,
        config.grad_accum,
        ddp=config.strategy == "ddp",
    )
    stepper.params = [p for p in model.parameters() if p.requires_grad]
    order = DataOrder(n, batch_size, config.seed, rank, world, device, pos)

    # -- loop --------------------------------------------------------------------------------------
    start_step = pos.step
    skip_timing = config.warmup_steps + (1 if config.compile else 0)
    meter = MemoryMeter(device)
    memory_reset_done = False
    step_times: list[float] = []
    data_times: list[float] = []
    timed_batches: list[tuple[int, int]] = []
    compile_s = None
    graphs_after_compile = None
    loss_curve: list[list[float]] = [list(x) for x in progress_state.get("loss_curve", [])]
    nonfinite_run = int(progress_state.get("nonfinite_run", 0))
    ckpt_path = checkpoint.checkpoint_path(run_dir)
    progress = _Progress(total_steps, start_step, config.log_every, main)
    last_loss = math.nan
    window_start: float | None = None
    cpu_start = cpu_end = 0.0
    window_end = 0.0
    ckpt_s = ckpt_in_window = 0.0

    def save_checkpoint(*, finished: bool) -> Any:
        # reads the loop's live state (position, loss curve, non-finite streak) at call time
        return _save(
            ckpt_path,
            model,
            optimizer,
            scheduler,
            policy,
            pos,
            resolved,
            recipe,
            data_hash,
            loss_curve,
            nonfinite_run,
            config.strategy,
            main,
            finished=finished,
        )

    try:
        while pos.step < total_steps:
            local_step = pos.step - start_step
            timed = local_step >= skip_timing
            if timed and not memory_reset_done:
                meter.reset()
                memory_reset_done = True
            starts = [order.next_global() for _ in range(config.grad_accum)]
            micro = [order.local_indices(e, s) for e, s in starts]
            sync(device)
            t0 = time.perf_counter()
            c0 = time.process_time()
            out = stepper(micro)
            sync(device)
            dt = time.perf_counter() - t0
            pos.step += 1
            if config.compile and local_step == 0:
                compile_s = dt
                graphs_after_compile = dynamo_graph_count()
            if timed:
                step_times.append(dt)
                data_times.append(out.data_s)
                timed_batches.extend(starts)
            loss = out.loss
            if world > 1:
                loss = parallel.all_reduce([loss], "sum", device)[0] / world
            last_loss = loss
            loss_curve.append([pos.step, loss])
            if math.isfinite(loss):
                nonfinite_run = 0
            else:
                nonfinite_run += 1
                if nonfinite_run >= config.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"training diverged: {nonfinite_run} consecutive non-finite losses at step {pos.step} "
                        f"(precision {config.precision}, max_nonfinite_steps={config.max_nonfinite_steps}); "
                        "lower learning_rate, enable clipping, or use bf16-mixed / 32-true"
                    )
            cur_lr = scheduler.get_last_lr()[0]
            scale = policy.loss_scale()
            sps = per_step / dt if dt > 0 else None
            if main:
                m = {"loss": loss, "lr": cur_lr, "step_time_s": dt}
                if sps:
                    m["samples_per_s"] = sps
                if scale is not None:
                    m["loss_scale"] = scale
                tracker.log_metrics(m, step=pos.step)
            progress.update(pos.step, loss, cur_lr, sps, scale)
            if config.checkpoint_every and pos.step % config.checkpoint_every == 0 and pos.step < total_steps:
                tc = time.perf_counter()
                save_checkpoint(finished=False)
                ckpt_s += time.perf_counter() - tc
                if timed:
                    ckpt_in_window += time.perf_counter() - tc
            if timed:
                # the window's wall clock includes the loop's own bookkeeping (logging, progress,
                # tracking): throughput is measured on it, not on the sum of step times
                window_end, cpu_end = time.perf_counter(), time.process_time()
                if window_start is None:
                    window_start, cpu_start = t0, c0
    finally:
        progress.close()

    mem = meter.read() if memory_reset_done else None
    final_state = save_checkpoint(finished=True)

    # -- figures -----------------------------------------------------------------------------------
    timed_s = (window_end - window_start - ckpt_in_window) if window_start is not None else 0.0
    samples = len(timed_batches) * batch_size  # global samples in the timed window
    sps = samples / timed_s if timed_s > 0 else None
    tokens = _count_tokens(recipe, inputs, order, timed_batches) if main else 0
    peak = mem.peak_bytes if mem else None
    reserved = mem.reserved_bytes if mem else None
    if world > 1:  # the largest peak of any rank (0 stands for "no reading")
        peak, reserved = (
            int(v) or None for v in parallel.all_reduce([peak or 0, reserved or 0], "max", device)
        )
    if not step_times and main:
        print(
            f"ampflow train: no step was timed ({pos.step - start_step} steps run, warmup_steps="
            f"{config.warmup_steps}{', plus the compiling step' if config.compile else ''}); speed and memory "
            "figures are empty: raise max_steps",
            file=sys.stderr,
        )
    peak_fs = peak_flops(device, policy.spec.compute)
    mfu = fps * sps / (world * peak_fs) if (fps and sps and peak_fs) else None
    recompiles = None
    if config.compile:
        recompiles = max(0, dynamo_graph_count() - (graphs_after_compile or 0)) if graphs_after_compile else 0
    metrics = {
        "samples_per_s": sps,
        "samples_per_s_per_device": sps / world if sps else None,
        "tokens_per_s": tokens / timed_s if tokens and timed_s > 0 else None,
        **step_time_stats(step_times),
        "data_wait_frac": sum(data_times) / timed_s if timed_s > 0 else None,
        "peak_memory_bytes": peak,
        "peak_memory_reserved_bytes": reserved,
        "compile_s": compile_s,
        "recompiles": recompiles,
        "flops_per_sample": fps,
        "mfu": mfu,
        "final_train_loss": last_loss if math.isfinite(last_loss) else None,
        "loss_scale": policy.loss_scale(),
        "skipped_steps": policy.skipped_steps,
        "steps": pos.step,
        "timed_steps": len(step_times),
        "batch_size": batch_size,
        "train_wall_s": time.perf_counter() - wall0,
        "timed_wall_s": timed_s,
        # process CPU time of the window: with one thread, a load-independent cost figure
        "timed_cpu_s": (cpu_end - cpu_start) if window_start is not None else None,
        "checkpoint_s": ckpt_s,
    }
    result = {
        "schema": RESULT_SCHEMA,
        "status": "ok",
        "recipe": config.recipe,
        "config": resolved.to_dict(),
        "precision": config.precision,
        "compile": config.compile,
        "strategy": config.strategy,
        "world_size": world,
        "device": device.type,
        "device_name": device_name(device),
        "bf16_emulated": bool(policy.is_bf16 and not bf16_native(device)),
        "fp32_matmul_precision": matmul_precision,
        "torch_version": torch.__version__,
        "ampflow_version": __version__,
        "dataset_hash": data_hash,
        "train_examples": n,
        "epochs_seen": pos.epoch + (1 if pos.index else 0),
        "lr_schedule": {"kind": schedule, "warmup_steps": lr_warm, "peak_lr": lr},
        "resumed_from_step": start_step if resume_state is not None else None,
        "memory_kind": mem.kind
        if mem
        else ("cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"),
        "peak_flops_per_device": peak_fs,
        "metrics": metrics,
        "batch_size_search": search_report,
        "loss_curve": loss_curve,
        "checkpoint": str(ckpt_path),
    }
    if config.strategy == "fsdp":
        # FSDP2 shards the parameters in place: hand the tracker a plain copy with the gathered weights
        # (gathered on rank 0 only, the one rank that logs)
        logged_model = None
        if main:
            logged_model = policy.convert_model(recipe.build_model(info))
            logged_model.load_state_dict(final_state)
    else:
        logged_model = parallel.unwrap(model)
    return {"result": result, "model": logged_model, "example": _example(inputs)}


def _example(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v[:2].detach().cpu().float().numpy() if v.is_floating_point() else v[:2].cpu().numpy()
        for k, v in inputs.items()
    }


def _count_tokens(
    recipe: Any, inputs: dict[str, Any], order: DataOrder, batches: list[tuple[int, int]]
) -> int:
    """Tokens of the exact samples of the timed window, counted after it (outside the clock)."""
    if not hasattr(recipe, "tokens_in_batch") or not batches:
        return 0
    idx = np.concatenate([order.global_indices(e, s) for e, s in batches])
    total = 0
    device = next(iter(inputs.values())).device
    for lo in range(0, len(idx), 4096):
        sel = torch.from_numpy(idx[lo : lo + 4096]).to(device)
        total += int(recipe.tokens_in_batch({k: v.index_select(0, sel) for k, v in inputs.items()}))
    return total


def _model_state(model: Any, strategy: str) -> dict[str, Any]:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in parallel.unwrap(model).state_dict().items()}


def _optim_state(optimizer: Any, model: Any, strategy: str) -> dict[str, Any]:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def _load_optimizer(optimizer: Any, model: Any, state: dict[str, Any], strategy: str) -> None:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def _save(
    path,
    model,
    optimizer,
    scheduler,
    policy,
    pos,
    resolved,
    recipe,
    data_hash,
    loss_curve,
    nonfinite_run,
    strategy,
    main,
    *,
    finished,
) -> dict[str, Any]:
    """Write the checkpoint (rank 0); returns the full model state it holds."""
    # gathering FSDP state is collective: every rank takes part, rank 0 writes
    model_state = _model_state(model, strategy)
    optim_state = _optim_state(optimizer, model, strategy)
    if main:
        checkpoint.save(
            path,
            {
                "step": pos.step,
                "epoch": pos.epoch,
                "index": pos.index,
                "finished": finished,
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "precision": policy.state_dict(),
                "rng": checkpoint.rng_state(),
                "config": resolved.to_dict(),
                "recipe": resolved.recipe,
                "recipe_name": getattr(recipe, "name", resolved.recipe),
                "dataset_hash": data_hash,
                "ampflow_version": __version__,
                "progress": {"loss_curve": loss_curve, "nonfinite_run": nonfinite_run},
            },
        )
    parallel.barrier()
    return model_state


def _auto_batch(config, model, inputs, labels, loss_fn, policy, device, world):
    """Run the doubling search with real steps on a copy of the model (weights and RNG untouched)."""
    import copy

    n = int(labels.shape[0])
    meter = MemoryMeter(device)

    def trial(bs: int) -> tuple[float, int | None]:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            probe = copy.deepcopy(model)
            opt = torch.optim.AdamW(probe.parameters(), lr=1e-6)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            trial_policy = PrecisionPolicy(
                policy.mode,
                policy.device_type,
                policy.spec,
                torch.amp.GradScaler(device.type) if policy.scaler else None,
            )
            st = Stepper(
                probe,
                opt,
                sched,
                trial_policy,
                loss_fn,
                inputs,
                labels,
                device,
                config.clip_grad_norm,
                config.grad_accum,
            )
            perm = torch.from_numpy(epoch_permutation(config.seed, 0, n)).to(device)
            local = bs // world
            meter.reset()
            times = []
            oom: BaseException | None = None
            try:
                for i in range(1 + AUTO_BATCH_TRIAL_STEPS):
                    lo = (i * bs * config.grad_accum) % max(1, n - bs * config.grad_accum + 1)
                    micro = [perm[lo + j * bs : lo + j * bs + local] for j in range(config.grad_accum)]
                    sync(device)
                    t0 = time.perf_counter()
                    st(micro)
                    sync(device)
                    if i:  # the first step warms caches and the allocator
                        times.append(time.perf_counter() - t0)
                peak = meter.read().peak_bytes
            except Exception as exc:
                if not autobatch.is_oom(exc):
                    raise
                oom = exc
            finally:
                del probe, opt, st
        # every rank must agree on an out-of-memory, or the others would wait in the next collective
        if parallel.all_reduce([1.0 if oom is not None else 0.0], "max", device)[0]:
            raise oom if oom is not None else torch.OutOfMemoryError("out of memory on another rank")
        sps = bs * config.grad_accum / (sum(times) / len(times))
        # every rank must agree: slowest throughput, largest memory
        sps = parallel.all_reduce([sps], "min", device)[0]
        peak = int(parallel.all_reduce([peak or 0], "max", device)[0]) or peak
        return sps, peak

    def on_oom() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    cap = min(config.auto_batch_max, n // config.grad_accum)
    chosen, trials, reason = autobatch.search(
        trial,
        start=AUTO_BATCH_START * world,
        cap=cap,
        multiple=world,
        memory_budget=config.auto_batch_memory_budget if device.type == "cpu" else None,
        plateau=config.auto_batch_plateau,
        on_oom=on_oom,
    )
    return chosen, {
        "chosen": chosen,
        "stop_reason": reason,
        "trials": [t.to_dict() for t in trials],
        "note": "trials ran without torch.compile",
    }

"""What ``ampflow doctor --gpu`` measures and checks on a CUDA machine (torch is imported inside).

    ampflow doctor --gpu --out gpu-check/

- :func:`environment`: GPU name, compute capability, driver, CUDA, cuDNN and NCCL versions, bf16 / TF32 /
  fp8 support, and the peak FLOP/s per dtype used for MFU with its source (``engine.peaks``);
- the checks, each returning ``{"name", "status": pass|fail|skip, "detail", ...figures}``:
  :func:`check_timing` (CUDA events against the synchronised wall clock ampflow times with, within 2 %),
  :func:`check_overflow` (a 16-mixed step with an injected inf gradient is skipped, the loss scale
  drops, the weights stay), :func:`check_oom` (the batch-size search meets a real CUDA out-of-memory
  under a memory cap, survives it and picks a size that then runs), :func:`check_ddp` (two processes
  under torchrun with NCCL end where one process ends, within the CPU test's 1e-5 / 1e-4);
- the workload recipes: :func:`minilm_long` (tweets-minilm padded to 256 tokens, so the encoder's
  matmuls dominate a GPU step) and :func:`blobs` (a dropout-free MLP on Gaussian blobs, for the DDP
  comparison).

The verdicts (``*_verdict``) are pure functions, tested on CPU; the overflow check runs on CPU too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ampflow.recipes.base import BaseRecipe
from ampflow.recipes.tweets import MiniLMRecipe

TIMING_TOLERANCE = 0.02  # CUDA events vs synchronised wall clock, relative
DDP_ATOL, DDP_RTOL = 1e-5, 1e-4  # the CPU test's tolerance (tests/test_train.py, two processes vs one)
GPU_SEQ_LEN = 256
OOM_HEADROOM_BYTES = 2 * 1024**3  # the memory cap of the OOM check: what is allocated + this


# -- workload recipes -----------------------------------------------------------------------------


class MiniLMLongRecipe(MiniLMRecipe):
    """tweets-minilm padded to 256 tokens: a GPU-sized step where the encoder's matmuls dominate."""

    name = "tweets-minilm-256"
    description = "tweets-minilm with every text padded to 256 tokens (ampflow doctor --gpu)"
    seq_len = GPU_SEQ_LEN
    defaults = {**MiniLMRecipe.defaults, "pad_to": "max"}


def minilm_long() -> MiniLMLongRecipe:
    """``--recipe ampflow.engine.gpucheck:minilm_long``."""
    return MiniLMLongRecipe()


class BlobsRecipe(BaseRecipe):
    """Three Gaussian blobs in 32 dimensions and a dropout-free MLP: a run whose only difference
    between one process and two is the order of float summation."""

    name = "gpu-check-blobs"
    description = "Gaussian blobs, MLP without dropout (DDP check)"
    label_column = "label"
    dedupe_columns = ["f0"]
    builtin_source = "generated: numpy seed 7"
    defaults: dict[str, Any] = {"batch_size": 32, "learning_rate": 0.01, "max_steps": 10, "warmup_steps": 2}

    def load_source(self, source: str | None) -> Any:
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(7)
        y = rng.integers(0, 3, 1200)
        x = rng.normal(size=(1200, 32)).astype(np.float32) + y[:, None] * 1.5
        df = pd.DataFrame(x, columns=[f"f{i}" for i in range(32)])
        df["label"] = [("a", "b", "c")[i] for i in y]
        return df

    def featurize(self, splits: dict[str, Any], out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        import numpy as np

        cols = [f"f{i}" for i in range(32)]
        return {s: {"x": df[cols].to_numpy(np.float32)} for s, df in splits.items()}, {"features": 32}

    def build_model(self, info: dict[str, Any]) -> Any:
        import torch

        class MLP(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, int(info["num_classes"]))
                )

            def forward(self, x: Any) -> Any:
                return self.net(x)

        return MLP()


def blobs() -> BlobsRecipe:
    """``--recipe ampflow.engine.gpucheck:blobs``."""
    return BlobsRecipe()


# -- environment ----------------------------------------------------------------------------------


def driver_version() -> str | None:
    """The NVIDIA driver version: NVML (pynvml) when installed, else ``nvidia-smi``; None without."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml, or NVML not loadable: ask the tool instead
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def environment(device: Any, peak_override: Any = None) -> dict[str, Any]:
    """The facts of this machine the report opens with (``device`` a torch device, CUDA or CPU).

    Peaks per dtype come from :func:`ampflow.engine.peaks.device_peaks` (probing where the table has
    no entry); fp8 support follows :func:`ampflow.engine.precision.fp8_unsupported_reason`.
    """
    import importlib.util

    import torch

    from ampflow import __version__
    from ampflow.engine.devices import bf16_native, device_name
    from ampflow.engine.peaks import device_peaks
    from ampflow.engine.precision import fp8_unsupported_reason

    cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "device": device.type,
        "gpu_name": device_name(device),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "compute_capability": None,
        "total_memory_bytes": None,
        "driver_version": driver_version() if cuda else None,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "nccl_version": None,
        "torch_version": torch.__version__,
        "ampflow_version": __version__,
        "torchao_version": None,
        "bf16_native": bf16_native(device),
        "tf32_supported": False,
        "fp8_supported": fp8_unsupported_reason(device, need_torchao=False) is None,
        "fp8_unsupported_reason": fp8_unsupported_reason(device),
    }
    if importlib.util.find_spec("torchao") is not None:
        from importlib.metadata import version

        env["torchao_version"] = version("torchao")
    if cuda:
        props = torch.cuda.get_device_properties(device)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["total_memory_bytes"] = int(props.total_memory)
        env["tf32_supported"] = props.major >= 8
        try:
            env["nccl_version"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # a build without NCCL
            env["nccl_version"] = None
    env["peaks"] = {k: v.to_dict() for k, v in device_peaks(device, peak_override).items()}
    return env


def supported_precisions(env: dict[str, Any]) -> list[str]:
    """The precision modes the check trains on this device: all of them where the hardware runs them
    natively (bf16 modes need native bf16, fp8 needs capability 8.9+ and torchao), never 16-true."""
    out = ["32-true", "tf32", "16-mixed"]
    if env.get("bf16_native"):
        out += ["bf16-mixed", "bf16-true"]
    if env.get("fp8_supported") and not env.get("fp8_unsupported_reason"):
        out.append("fp8")
    return out


# -- verdicts (pure) ------------------------------------------------------------------------------


def check(name: str, passed: bool | None, detail: str, **figures: Any) -> dict[str, Any]:
    """One check's record: ``passed`` True/False/None -> status pass/fail/skip."""
    status = "skip" if passed is None else ("pass" if passed else "fail")
    return {"name": name, "status": status, "detail": detail, **figures}


def timing_verdict(event_s: float, wall_s: float, tolerance: float = TIMING_TOLERANCE) -> dict[str, Any]:
    """CUDA-event seconds against wall-clock seconds of the same window: pass within ``tolerance``."""
    diff = abs(event_s - wall_s) / wall_s if wall_s > 0 else float("inf")
    return check(
        "timing",
        diff <= tolerance,
        f"CUDA events {event_s:.4f} s vs synchronised wall clock {wall_s:.4f} s: "
        f"{diff * 100:.2f} % apart (allowed {tolerance * 100:.0f} %)",
        event_s=event_s,
        wall_s=wall_s,
        relative_difference=diff,
    )


def overflow_verdict(
    *, stepped: bool, skipped_steps: int, scale_before: float, scale_after: float, weights_kept: bool,
    next_stepped: bool,
) -> dict[str, Any]:  # fmt: skip
    """The injected-inf step must be skipped and counted, the scale must drop, the weights must stay,
    and the next clean step must go through."""
    ok = (not stepped) and skipped_steps == 1 and scale_after < scale_before and weights_kept and next_stepped
    return check(
        "fp16_overflow",
        ok,
        f"inf gradient: step {'skipped' if not stepped else 'TAKEN'}, skipped_steps={skipped_steps}, "
        f"loss scale {scale_before:g} -> {scale_after:g}, weights {'kept' if weights_kept else 'CHANGED'}, "
        f"next clean step {'taken' if next_stepped else 'SKIPPED'}",
        scale_before=scale_before,
        scale_after=scale_after,
    )


def oom_verdict(report: dict[str, Any] | None, fits: bool | None, error: str | None = None) -> dict[str, Any]:
    """The batch-size search must have met an out-of-memory (a trial with outcome ``oom``), chosen a
    size, and that size must then run (``fits``) under the same memory cap."""
    if report is None:
        return check("oom_batch_search", False, f"the search failed: {error}")
    trials = report.get("trials") or []
    oom = [t["batch_size"] for t in trials if t.get("outcome") == "oom"]
    sizes = ", ".join(f"{t['batch_size']}:{t['outcome']}" for t in trials)
    if not oom:
        return check(
            "oom_batch_search",
            False,
            f"no out-of-memory was reached (stop: {report.get('stop_reason')}; trials {sizes})",
            chosen=report.get("chosen"),
        )
    return check(
        "oom_batch_search",
        bool(fits),
        f"out-of-memory at batch {oom[0]} survived; chose {report.get('chosen')}, which "
        f"{'runs' if fits else 'does NOT run'} under the same cap (trials {sizes})",
        chosen=report.get("chosen"),
        oom_batch_size=oom[0],
    )


def ddp_verdict(max_abs_diff: float | None, close: bool, detail: str = "") -> dict[str, Any]:
    """Two NCCL processes against one: the final weights within the CPU test's tolerance."""
    if max_abs_diff is None:
        return check("ddp_nccl", False, detail or "a run failed")
    return check(
        "ddp_nccl",
        close,
        f"2 processes (NCCL) vs 1: largest weight difference {max_abs_diff:.2e} "
        f"(allowed atol {DDP_ATOL:g} + rtol {DDP_RTOL:g}){'; ' + detail if detail else ''}",
        max_abs_diff=max_abs_diff,
    )


# -- the checks -----------------------------------------------------------------------------------


def _mlp(width: int, layers: int, classes: int, device: Any) -> Any:
    import torch

    mods: list[Any] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.GELU()]
    mods.append(torch.nn.Linear(width, classes))
    seq = torch.nn.Sequential(*mods)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = seq

        def forward(self, x: Any) -> Any:
            return self.net(x)

    return Model().to(device)


def _stepper(
    model: Any, policy: Any, inputs: dict[str, Any], labels: Any, device: Any, clip: float | None
) -> Any:
    import torch

    from ampflow.engine.step import Stepper

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Stepper(
        model, opt, sched, policy, lambda lo, la: torch.nn.functional.cross_entropy(lo.float(), la),
        inputs, labels, device, clip, 1,
    )  # fmt: skip


def check_timing(device: Any, steps: int = 40, batch: int = 4096, width: int = 4096) -> dict[str, Any]:
    """Time ``steps`` bf16-mixed training steps of a wide MLP by ampflow's clock (synchronise, then
    ``perf_counter``, as :class:`ampflow.engine.throughput.ThroughputWindow` does) and by CUDA events
    recorded on the same stream; :func:`timing_verdict` judges."""
    import torch

    from ampflow.engine.precision import make_policy
    from ampflow.engine.throughput import ThroughputWindow

    torch.manual_seed(0)
    model = _mlp(width, 4, 8, device)
    n = batch * 4
    inputs = {"x": torch.randn(n, width, device=device)}
    labels = torch.randint(0, 8, (n,), device=device)
    st = _stepper(model, make_policy("bf16-mixed", "cuda", check=False), inputs, labels, device, 1.0)
    idx = [torch.arange(i * batch, (i + 1) * batch, device=device) for i in range(4)]
    for i in range(3):  # warm-up: cuBLAS heuristics, allocator
        st([idx[i % 4]])
    window = ThroughputWindow(device, 0, False)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    window.clock_start()
    start.record()
    for i in range(steps):
        st([idx[i % 4]])
    end.record()
    wall_s = window.clock_stop()
    event_s = start.elapsed_time(end) / 1000.0
    del st, model, inputs
    torch.cuda.empty_cache()
    return timing_verdict(event_s, wall_s)


def check_overflow(device: Any) -> dict[str, Any]:
    """One 16-mixed step whose gradient is made inf by a hook, through ampflow's Stepper and a real
    ``torch.amp.GradScaler`` (CUDA, or CPU where torch has a CPU scaler), then one clean step."""
    import torch

    from ampflow.engine.precision import MODES, PrecisionPolicy

    torch.manual_seed(0)
    model = _mlp(64, 1, 4, device)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16)
    policy = PrecisionPolicy("16-mixed", device.type, MODES["16-mixed"], scaler)
    inputs = {"x": torch.randn(32, 64, device=device)}
    labels = torch.randint(0, 4, (32,), device=device)
    st = _stepper(model, policy, inputs, labels, device, 1.0)
    first = model.net[0].weight
    hook = first.register_hook(lambda g: g * float("inf"))
    before = first.detach().clone()
    scale_before = float(scaler.get_scale())
    out = st([torch.arange(32, device=device)])
    hook.remove()
    scale_after = float(scaler.get_scale())
    kept = bool(torch.equal(first.detach(), before))
    nxt = st([torch.arange(32, device=device)])
    return overflow_verdict(
        stepped=out.stepped,
        skipped_steps=policy.skipped_steps,
        scale_before=scale_before,
        scale_after=scale_after,
        weights_kept=kept,
        next_stepped=nxt.stepped,
    )


def check_oom(device: Any, seq: int = 512, n: int = 8192) -> dict[str, Any]:
    """``batch_size=auto`` under a memory cap of what is allocated plus 2 GiB
    (``torch.cuda.set_per_process_memory_fraction``), on a model whose activations grow ~23 MB per
    sample: the doubling search must hit the allocator's out-of-memory, survive it, and choose a size
    that then trains two steps under the same cap. The cap is lifted afterwards."""
    import torch

    from ampflow.config import RunConfig
    from ampflow.engine import autobatch
    from ampflow.engine.precision import make_policy

    class TokenMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(1024, 1024)
            self.up, self.down = torch.nn.Linear(1024, 4096), torch.nn.Linear(4096, 1024)
            self.head = torch.nn.Linear(1024, 2)

        def forward(self, ids: Any) -> Any:
            h = self.embed(ids)
            h = h + self.down(torch.nn.functional.gelu(self.up(h)))
            return self.head(h.mean(1))

    torch.manual_seed(0)
    torch.cuda.empty_cache()
    model = TokenMLP().to(device)
    inputs = {"ids": torch.randint(0, 1024, (n, seq), device=device)}
    labels = torch.randint(0, 2, (n,), device=device)
    policy = make_policy("32-true", "cuda", check=False)
    config = RunConfig(recipe="gpu-check", auto_batch_max=n, auto_batch_plateau=0.0)
    total = torch.cuda.get_device_properties(device).total_memory
    cap = min(1.0, (torch.cuda.memory_allocated(device) + OOM_HEADROOM_BYTES) / total)
    loss_fn = lambda lo, la: torch.nn.functional.cross_entropy(lo.float(), la)  # noqa: E731
    torch.cuda.set_per_process_memory_fraction(cap, device)
    report, fits, error = None, None, None
    try:
        try:
            chosen, report = autobatch.search_batch_size(
                config, model, inputs, labels, loss_fn, policy, device, 1
            )
        except RuntimeError as exc:
            error = str(exc)
        else:
            try:
                st = _stepper(model, policy, inputs, labels, device, 1.0)
                for i in range(2):
                    st([torch.arange(i * chosen, (i + 1) * chosen, device=device) % n])
                torch.cuda.synchronize(device)
                fits = True
                del st
            except Exception as exc:
                if not autobatch.is_oom(exc):
                    raise
                fits = False
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        del model, inputs
        torch.cuda.empty_cache()
    result = oom_verdict(report, fits, error)
    result["memory_cap_bytes"] = int(cap * total)
    return result


def check_ddp(work: Path, gpus: int) -> dict[str, Any]:
    """With 2+ GPUs: ``torchrun --nproc_per_node=2 -m ampflow train --strategy ddp`` (NCCL) against
    one process, 10 steps of the blobs recipe at batch 32, final weights compared at the CPU test's
    tolerance. Skipped with fewer than 2 GPUs."""
    if gpus < 2:
        return check("ddp_nccl", None, f"needs 2 or more GPUs; this machine has {gpus}")
    import torch

    from ampflow.commands import torchrun_program

    recipe = "ampflow.engine.gpucheck:blobs"
    env = {**os.environ, "AMPFLOW_TRACKING": "off"}
    env.pop("MLFLOW_RUN_ID", None)
    data, logs = work / "data", work / "logs.txt"
    work.mkdir(parents=True, exist_ok=True)
    common = [
        "train",
        "--recipe",
        recipe,
        "--data",
        str(data),
        "--set",
        "device=cuda",
        "--set",
        "max_steps=10",
    ]
    runs = {
        "prep": [sys.executable, "-m", "ampflow", "prep", "--recipe", recipe, "--out", str(data)],
        "one": [sys.executable, "-m", "ampflow", *common, "--out", str(work / "one")],
        "two": [*torchrun_program(2), *common, "--strategy", "ddp", "--out", str(work / "two")],
    }
    for name, argv in runs.items():
        with open(logs, "a") as log:
            rc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300).returncode  # noqa: S603
        if rc != 0:
            return ddp_verdict(None, False, f"{name} exited {rc}; see {logs}")
    a = torch.load(work / "one" / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]
    b = torch.load(work / "two" / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    close = all(torch.allclose(a[k].float(), b[k].float(), atol=DDP_ATOL, rtol=DDP_RTOL) for k in a)
    return ddp_verdict(diff, close)


def run_checks(device: Any, work: Path) -> list[dict[str, Any]]:
    """Every check in order; a check that raises is a failed check (its error in ``detail``), never
    the end of the others."""
    import torch

    checks = []
    for name, fn in (
        ("timing", lambda: check_timing(device)),
        ("fp16_overflow", lambda: check_overflow(device)),
        ("oom_batch_search", lambda: check_oom(device)),
        ("ddp_nccl", lambda: check_ddp(work / "ddp", torch.cuda.device_count())),
    ):
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # a broken CUDA path is exactly what the check is for: report it
            result = check(name, False, f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        result["seconds"] = round(time.perf_counter() - t0, 2)
        checks.append(result)
    return checks

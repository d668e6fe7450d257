"""``ampflow doctor``: what this machine computes with; ``--gpu``: the GPU readiness check (``make gpu-check``).

    ampflow doctor
    ampflow doctor --gpu --out gpu-check/
    ampflow doctor --gpu --out gpu-check/ --no-bench

Without ``--gpu``: the device, bf16 / TF32 / fp8 support and the peak FLOP/s per dtype MFU uses (a
short matmul probe where no data sheet applies, cached). With ``--gpu`` (a CUDA device is required:
exit 2 without one): the environment, then four checks (CUDA-event timing against the synchronised
wall clock, an injected fp16 overflow, the batch-size search through a real out-of-memory, DDP under
torchrun with NCCL on 2+ GPUs), then ``ampflow bench`` on tweets-minilm padded to 256 tokens with
``batch_size=auto``: every precision the device supports, bf16-mixed also compiled. Writes
``gpu_check.json``, ``report.md`` and ``report.html`` (plots) into ``--out`` (the sweep under
``--out/bench``), prints the Markdown, and attaches the files to the sweep's MLflow run when tracking
is on. Exit 0 when every check passed and every configuration trained, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError, RunConfig
from ampflow.steps import Paths, add_set_argument

HELP = "this machine's precisions and MFU peaks; --gpu: the GPU readiness check (make gpu-check)"
RECIPE = "ampflow.engine.gpucheck:minilm_long"
DEFAULT_MAX_STEPS = 40
DEFAULT_TARGET_ACCURACY = 0.6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu", action="store_true", help="run the CUDA checks and the precision sweep (needs a CUDA GPU)"
    )
    p.add_argument("--out", default="gpu-check", help="report folder (default: gpu-check)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help="optimizer steps per configuration, the first 5 untimed",
    )
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=DEFAULT_TARGET_ACCURACY,
        help="validation accuracy that time to target is measured to",
    )
    p.add_argument("--no-bench", action="store_true", help="environment and checks only, no precision sweep")
    add_set_argument(
        p, "override for every training run of the sweep (repeatable), e.g. --set peak_flops=bf16:9.9e14"
    )


def cli(args: argparse.Namespace) -> int:
    if args.max_steps < 10:
        raise ConfigError(f"--max-steps must be at least 10 (5 untimed + timed steps), got {args.max_steps}")
    if not 0 < args.target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy}")
    config = RunConfig(recipe=RECIPE).with_overrides(args.overrides)
    if not args.gpu:
        from ampflow.compare.gpu_report import environment_lines, peaks_table

        env = environment_only(config)
        print("\n".join([*environment_lines(env), "", *peaks_table(env)]))
        return 0
    report = run(
        config,
        Paths.of(out=args.out),
        max_steps=args.max_steps,
        target_accuracy=args.target_accuracy,
        bench=not args.no_bench,
        overrides=args.overrides,
    )
    print()
    print(report["markdown"])
    for name in ("gpu_check.json", "report.md", "report.html"):
        print(f"wrote {Path(args.out) / name}")
    if not report["passed"]:
        print("ampflow doctor: the GPU check FAILED (see the lines marked FAIL above)", file=sys.stderr)
        return 1
    return 0


def environment_only(config: RunConfig) -> dict[str, Any]:
    """The environment of the device ``auto`` picks (CUDA device 0, else the CPU)."""
    import torch

    from ampflow.engine.gpucheck import environment

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return environment(device, config.peak_flops)


def require_cuda() -> None:
    """ConfigError (exit 2, one line) unless torch sees a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")
        raise ConfigError(
            f"doctor --gpu needs a CUDA GPU and {build} sees none (torch.cuda.is_available() is false); "
            "run it on a GPU machine, or run ampflow doctor without --gpu"
        )


def run(
    config: RunConfig,
    paths: Paths,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    bench: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The GPU check; returns the report dict (``markdown`` added) after writing its files.

    The checks run first and their report is written at once, so a sweep cut short by a timeout still
    leaves them. Raises ConfigError without CUDA.
    """
    require_cuda()
    import torch

    from ampflow.engine.gpucheck import environment, run_checks

    if paths.out is None:
        raise ConfigError("--out is required")
    out = Path(paths.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = torch.device("cuda", 0)
    print(f"[doctor] environment of {torch.cuda.get_device_name(device)}", flush=True)
    report: dict[str, Any] = {
        "schema": "ampflow.gpu_check/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(device, config.peak_flops),
        "workload": None,
        "configs": [],
        "checks": [],
        "sweep": None,
    }
    print("[doctor] checks: timing, fp16 overflow, out-of-memory search, DDP", flush=True)
    report["checks"] = run_checks(device, out / "checks")
    torch.cuda.empty_cache()
    _write(report, out, t0)
    if bench:
        report.update(_sweep(report["environment"], out, max_steps, target_accuracy, overrides or []))
    return _write(report, out, t0, publish=True)


def sweep_settings(max_steps: int, target_accuracy: float, overrides: list[str]) -> list[str]:
    """The ``--set`` strings every configuration trains with: batch size auto on the GPU, the first 5
    steps untimed, the learning rate scaled by sqrt(batch / 32) where the engine supports it,
    validation every 10 steps toward ``target_accuracy``; the user's ``overrides`` last (they win)."""
    wanted = {
        "batch_size": "auto",
        "max_steps": str(max_steps),
        "warmup_steps": "5",
        "device": "cuda",
        "pad_to": "max",
        "lr_scaling": "sqrt",
        "val_every": "10",
        "target_accuracy": str(target_accuracy),
    }
    known = set(RunConfig.field_names())
    return [f"{k}={v}" for k, v in wanted.items() if k in known] + list(overrides)


def sweep_entries(precisions: list[str]) -> tuple[Any, list[Any]]:
    """``(SweepSpec, entries)``: every precision uncompiled, and bf16-mixed compiled as well."""
    from ampflow.config import SweepSpec

    compile_modes = (False, True) if "bf16-mixed" in precisions else (False,)
    sweep = SweepSpec(tuple(precisions), compile_modes, baseline="32-true")
    entries = [e for e in sweep.entries() if not e.compile or e.precision == "bf16-mixed"]
    return sweep, entries


def _sweep(
    env: dict[str, Any], out: Path, max_steps: int, target_accuracy: float, overrides: list[str]
) -> dict[str, Any]:
    """Train every supported precision through ``ampflow bench``; the report's configs and workload."""
    from ampflow.compare.gpu_report import config_rows
    from ampflow.engine.gpucheck import GPU_SEQ_LEN, supported_precisions
    from ampflow.steps import bench

    settings = sweep_settings(max_steps, target_accuracy, overrides)
    sweep, entries = sweep_entries(supported_precisions(env))
    config = RunConfig(recipe=RECIPE).with_overrides(settings)
    workload = {
        "recipe": RECIPE,
        "seq_len": GPU_SEQ_LEN,
        "settings": settings,
        "target_accuracy": target_accuracy,
        "configs": [e.id for e in entries],
    }
    print(f"[doctor] sweep: {', '.join(e.id for e in entries)}", flush=True)
    try:
        summary = bench.run(
            config, Paths.of(out=out / "bench"), sweep=sweep, entries=entries, overrides=settings
        )
    except RuntimeError as exc:  # every configuration failed: the rows say so, the report still comes
        print(f"[doctor] sweep failed: {exc}", file=sys.stderr)
        records = [
            {"id": e.id, "precision": e.precision, "compile": e.compile, "status": "failed",
             "run_dir": str(out / "bench" / "runs" / e.id)}
            for e in entries
        ]  # fmt: skip
        return {"workload": workload, "configs": config_rows(records), "sweep": None}
    return {
        "workload": workload,
        "configs": config_rows(summary["runs"]),
        "sweep": {"out": str(out / "bench"), "sweep_run_id": summary.get("sweep_run_id")},
    }


def _write(report: dict[str, Any], out: Path, t0: float, publish: bool = False) -> dict[str, Any]:
    """Write gpu_check.json, report.md and report.html; attach them to the sweep's MLflow run."""
    from ampflow.compare.gpu_report import passed, render_html, render_markdown
    from ampflow.io import atomic_write_json, atomic_write_text

    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["passed"] = passed(report)
    files = [out / "gpu_check.json", out / "report.md", out / "report.html"]
    atomic_write_json(files[0], report)
    markdown = render_markdown(report)
    atomic_write_text(files[1], markdown)
    atomic_write_text(files[2], render_html(report))
    run_id = (report.get("sweep") or {}).get("sweep_run_id")
    if publish and run_id:
        _publish(run_id, report, files)
    return {**report, "markdown": markdown}


def _publish(run_id: str, report: dict[str, Any], files: list[Path]) -> None:
    """The report files under ``gpu-check/`` on the sweep run, a tag with the verdict and one metric
    per check (1 pass, 0 fail); a tracking store that cannot be reached costs a warning, not the check."""
    try:
        from ampflow.tracking.queries import _client

        client, _ = _client(None)
        for f in files:
            client.log_artifact(run_id, str(f), "gpu-check")
        client.set_tag(run_id, "ampflow.gpu_check", "passed" if report["passed"] else "failed")
        for c in report["checks"]:
            if c["status"] != "skip":
                client.log_metric(run_id, f"gpu_check/{c['name']}", 1.0 if c["status"] == "pass" else 0.0)
    except Exception as exc:  # the report is on disk already
        print(f"[doctor] could not attach the report to MLflow run {run_id}: {exc}", file=sys.stderr)

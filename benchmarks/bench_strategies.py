"""Parallel strategies side by side on the transformer recipe: throughput and peak memory per rank.

    python -m benchmarks.bench_strategies                      # tweets-minilm, every strategy this machine allows
    python -m benchmarks.bench_strategies --strategies single,tp,pp --steps 12 --data data/tweets-minilm

Each configuration is a real ``ampflow train`` process tree (``torchrun --nproc_per_node=N`` for the
parallel ones) with one torch thread per process, the same data, seed, global batch and steps:
``single`` (1 process), ``ddp``, ``fsdp``, ``tp``, ``pp`` (2 processes; pp runs 1F1B over ``grad_accum``
micro-batches, every other strategy accumulates the same micro-batches), and on 4 processes ``pp_dp``
(two 2-stage pipelines, ``pp`` on a ``pp:2,dp:2`` mesh) and ``fsdp+tp`` on a 2x2 mesh (on fewer than 4
cores they share cores, which the figures then show). Sequences are
padded to the full width for all (``pad_to=max``): a pipeline stage keeps one shape.

On a CPU these figures show each layout's overheads (collectives through gloo and shared memory, the
pipeline's bubble) and what it does to memory per rank, not the speed-ups the same layouts give on GPUs
with NVLink. Without ``--data`` it prepares a 1,024-tweet subset of tweets-minilm first. Figures are
printed, never asserted; on a GPU node the same command measures NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ampflow.commands import torchrun_program

ROOT = Path(__file__).resolve().parents[1]
# name -> (processes, extra settings); a name is its --strategy, except pp_dp (pp on a pp:2,dp:2 mesh)
LAYOUTS: dict[str, tuple[int, list[str]]] = {
    "single": (1, []),
    "ddp": (2, []),
    "fsdp": (2, []),
    "tp": (2, []),
    "pp": (2, ["--set", "pp_schedule=1f1b"]),
    "pp_dp": (4, ["--set", "pp_schedule=1f1b", "--set", "mesh=dp:2,pp:2"]),
    "fsdp+tp": (4, ["--set", "mesh=dp:2,tp:2"]),
}


def _env() -> dict[str, str]:
    return {**os.environ, "AMPFLOW_TRACKING": "off", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train(strategy: str, data: Path, out: Path, args: argparse.Namespace) -> dict:
    nproc, extra = LAYOUTS[strategy]
    common = ["train", "--recipe", args.recipe, "--data", str(data), "--out", str(out)]
    common += ["--precision", args.precision, *extra]
    for kv in (
        f"batch_size={args.batch}",
        f"grad_accum={args.grad_accum}",
        f"max_steps={args.steps}",
        f"warmup_steps={args.warmup}",
        "pad_to=max",
        "log_every=1000000",
    ):
        common += ["--set", kv]
    if strategy == "single":
        argv = [sys.executable, "-m", "ampflow", *common]
    else:
        argv = [*torchrun_program(nproc), *common, "--strategy", strategy.removesuffix("_dp")]
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def _prep(out: Path, recipe: str, limit: int) -> Path:
    argv = [sys.executable, "-m", "ampflow", "prep", "--recipe", recipe, "--out", str(out)]
    subprocess.run([*argv, "--limit", str(limit)], env=_env(), check=True, capture_output=True)  # noqa: S603
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_strategies", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="tweets-minilm")
    p.add_argument("--data", help="prepared dataset of --recipe (default: prep a small subset)")
    p.add_argument("--limit", type=int, default=1024, help="rows to prep without --data")
    p.add_argument("--strategies", default=",".join(LAYOUTS))
    p.add_argument("--precision", default="32-true")
    p.add_argument("--batch", type=int, default=8, help="global micro-batch")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step (pp's micro-batches)")
    p.add_argument(
        "--steps",
        type=int,
        default=10,
        help="steps per configuration: warm-up, then 2 profiled for the comm share (distributed), then timed",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed leading steps")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        print(f"unknown strategy {unknown[0]!r}; choose from {', '.join(LAYOUTS)}", file=sys.stderr)
        return 2
    print(
        f"recipe {args.recipe}, {args.precision}, global batch {args.batch} x {args.grad_accum} micro-batches, "
        f"{args.steps} steps ({args.warmup} untimed), 1 torch thread per process, {os.cpu_count()} cores. "
        "CPU figures show overheads and memory, not GPU speed-ups.",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="ampflow-strategies-") as tmp:
        data = Path(args.data) if args.data else _prep(Path(tmp) / "data", args.recipe, args.limit)
        for name in names:
            try:
                res = _train(name, data, Path(tmp) / name.replace("+", "_"), args)
            except RuntimeError as exc:
                # the child's last line is its error (the first is only "failed (exit 1):")
                print(f"  {name}: FAILED {str(exc).strip().splitlines()[-1]}", flush=True)
                continue
            m = res["metrics"]
            rows.append((name, res.get("mesh") or f"dp:{res['world_size']}", res["world_size"], m))
            print(f"  {name}: {m.get('samples_per_s') or 0:.1f} samples/s", flush=True)
    print(
        f"{'strategy':<9} {'mesh':<10} {'ranks':>5} {'samples/s':>10} {'per rank':>9} {'peak MiB/rank':>14} "
        f"{'bubble':>7} {'comm share':>10}"
    )
    for name, mesh, world, m in rows:
        sps, peak = m.get("samples_per_s"), m.get("peak_memory_bytes")
        bubble, comm = m.get("pp_bubble_fraction"), m.get("comm_time_share")
        print(
            f"{name:<9} {mesh:<10} {world:>5} {sps or 0:>10.1f} {(sps or 0) / world:>9.1f} "
            f"{(peak or 0) / 2**20:>14.0f} {'' if bubble is None else f'{bubble:.2f}':>7} "
            f"{'' if comm is None else f'{comm:.2f}':>10}"
        )
    print(
        "peak memory: the largest peak resident memory of any rank (CUDA: max allocated) over the timed steps; "
        "comm share: exposed communication over the profiled steps after warm-up (metrics.comm_time_share)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scaling efficiency of multi-process training: N-process throughput / (N x 1-process throughput).

    python -m benchmarks.bench_scaling                        # synthetic MLP, 1 and 2 processes, gloo
    python -m benchmarks.bench_scaling --nprocs 1,2,4 --per-device-batch 64 --steps 120 --repeats 3

Weak scaling: every process keeps ``--per-device-batch`` samples per step (global batch = N x that), as
one runs DDP in practice. Each configuration is a real ``ampflow train`` process tree (plain for N=1,
``torchrun --nproc_per_node=N ... --strategy ddp`` otherwise) with one torch thread per process, so N
processes use N cores; repeats interleave the process counts. On a CPU the all-reduce goes through gloo
and shared memory bandwidth, so efficiency well below 1 is expected there; the same command on a GPU
node measures NCCL. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ampflow.commands import torchrun_program


def _train(nproc: int, data: Path, out: Path, recipe: str, batch: int, steps: int, strategy: str) -> dict:
    common = [
        "train",
        "--recipe",
        recipe,
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        f"batch_size={batch}",
        "--set",
        f"max_steps={steps}",
        "--set",
        "warmup_steps=10",
        "--set",
        "log_every=1000000",
    ]
    if nproc == 1:
        argv = [sys.executable, "-m", "ampflow", *common]
    else:
        argv = [*torchrun_program(nproc), *common, "--strategy", strategy]
    env = {
        **os.environ,
        "AMPFLOW_TRACKING": "off",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if proc.returncode != 0:
        raise RuntimeError(f"{nproc} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_scaling", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="benchmarks.bench_overhead:synthetic")
    p.add_argument("--data", help="prepared dataset (default: the synthetic one of bench_overhead)")
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--per-device-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    nprocs = [int(x) for x in args.nprocs.split(",")]
    if 1 not in nprocs:
        nprocs = [1, *nprocs]
    print(
        f"recipe {args.recipe}, {args.strategy}, per-device batch {args.per_device_batch}, {args.steps} steps, "
        f"{args.repeats} interleaved repeats, 1 torch thread per process, {os.cpu_count()} cores",
        flush=True,
    )
    sps: dict[int, list[float]] = {n: [] for n in nprocs}
    with tempfile.TemporaryDirectory(prefix="ampflow-scaling-") as tmp:
        if args.data:
            data = Path(args.data)
        else:
            from benchmarks.bench_overhead import write_synthetic

            data = write_synthetic(Path(tmp) / "data")
        for r in range(args.repeats):
            for n in nprocs:
                res = _train(
                    n,
                    data,
                    Path(tmp) / f"n{n}-r{r}",
                    args.recipe,
                    n * args.per_device_batch,
                    args.steps,
                    args.strategy,
                )
                sps[n].append(res["metrics"]["samples_per_s"])
                print(f"  repeat {r + 1}, {n} process(es): {sps[n][-1]:.0f} samples/s", flush=True)
    base = statistics.median(sps[1])
    print(f"{'procs':>5} {'samples/s':>10} {'per device':>10} {'efficiency':>10}")
    for n in nprocs:
        med = statistics.median(sps[n])
        print(f"{n:>5} {med:>10.0f} {med / n:>10.0f} {med / (n * base):>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make bench``: every benchmark of ampflow, one after another, figures printed side by side.

    python -m benchmarks.run_all                 # everything
    python -m benchmarks.run_all overhead table  # a selection (names below)

Nothing here asserts on time: benchmarks print measured figures and ratios; the README quotes them
with the machine they came from. Each benchmark module runs as ``python -m benchmarks.<name>`` and exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
import time

BENCHMARKS = {
    "overhead": "benchmarks.bench_overhead",  # harness vs a hand-written loop, data-wait share
    "peers": "benchmarks.bench_peers",  # tweets-minilm: ampflow vs a plain loop, Lightning Fabric, Accelerate
    "table": "benchmarks.bench_precision_table",  # precision table per recipe
    "tracking": "benchmarks.bench_tracking",  # MLflow logging cost against a real server
    "scaling": "benchmarks.bench_scaling",  # N-process DDP throughput vs N x 1 process
    "strategies": "benchmarks.bench_strategies",  # ddp, fsdp, tp, pp, fsdp+tp: speed, memory per rank
    "checkpoint": "benchmarks.bench_checkpoint",  # fsdp, tp: one gathered file vs per-rank DCP shards
    "padding": "benchmarks.bench_padding",  # tweets-minilm: bucket vs fixed 64-token padding, paired accuracy
    "streaming": "benchmarks.bench_streaming",  # data larger than a cgroup memory limit, streamed
    "time_to_target": "benchmarks.bench_time_to_target",  # tweets-minilm: bf16-mixed vs 32-true to a val accuracy
}


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    line = f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, {platform.system()}"
    try:
        from ampflow.engine.devices import cpu_has_native_bf16

        # the bf16 figures mean different things on the two kinds of CPU: say which one this is
        line += ", bf16 " + (
            "native (avx512_bf16/AMX)" if cpu_has_native_bf16() else "emulated (no avx512_bf16/AMX)"
        )
    except ImportError:  # torch missing: the benchmarks will say so themselves
        pass
    return line


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    worst = 0
    for name in names:
        module = BENCHMARKS[name]
        if importlib.util.find_spec(module) is None:
            print(f"\n== {name}: not available in this checkout", flush=True)
            continue
        print(f"\n== {name} ({module})", flush=True)
        t0 = time.perf_counter()
        # each benchmark in a fresh process: no thread pool, allocator, environment or compile-cache
        # state carried from one into the next
        rc = subprocess.run([sys.executable, "-m", module], check=False).returncode
        print(f"== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    sys.exit(main())

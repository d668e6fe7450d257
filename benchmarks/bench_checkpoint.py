"""Checkpoint formats side by side: one gathered file against per-rank DCP shards (issue 14).

    python -m benchmarks.bench_checkpoint                          # tweets-minilm, fsdp and tp, 2 processes
    python -m benchmarks.bench_checkpoint --strategies fsdp --steps 9 --every 2 --data data/tweets-minilm

For each strategy, two real ``torchrun`` trainings of 2 processes (one torch thread each) on the same
data, seed and steps, writing a checkpoint every ``--every`` steps: ``checkpoint_format=full`` (every
rank takes part in gathering the whole model and optimizer state, rank 0 writes one file) and
``checkpoint_format=sharded`` (every rank writes its own shards with ``torch.distributed.checkpoint``,
nothing is gathered). Printed per run: seconds per periodic checkpoint (``metrics.checkpoint_s`` over
the checkpoints written before the last step), the checkpoint's size on disk, the largest peak resident
memory of any rank (on CPU the process's high-water mark, so it includes the checkpoints), and
samples/s with checkpoint time taken out. Figures are printed, never asserted. On a CPU the gather goes
through gloo and shared memory; on GPUs it also crosses the network, and the full copy on rank 0 is
what runs a large model's rank 0 out of memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ampflow.commands import torchrun_program
from benchmarks.bench_strategies import _env, _prep

FORMATS = ("full", "sharded")


def _train(strategy: str, fmt: str, data: Path, out: Path, args: argparse.Namespace) -> dict:
    argv = [*torchrun_program(2), "train", "--recipe", args.recipe, "--data", str(data), "--out", str(out)]
    argv += ["--strategy", strategy, "--precision", args.precision]
    for kv in (
        f"batch_size={args.batch}",
        f"max_steps={args.steps}",
        f"checkpoint_every={args.every}",
        f"checkpoint_format={fmt}",
        "warmup_steps=2",
        "comm_profile_steps=0",
        "pad_to=max",
        "log_every=1000000",
    ):
        argv += ["--set", kv]
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} {fmt} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def _size(run: Path) -> int:
    """Bytes of checkpoint.pt and the shards it points to (if any)."""
    files = [run / "checkpoint.pt", *(run / "checkpoint.dcp").rglob("*")]
    return sum(f.stat().st_size for f in files if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_checkpoint", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="tweets-minilm")
    p.add_argument("--data", help="prepared dataset of --recipe (default: prep a small subset)")
    p.add_argument("--limit", type=int, default=1024, help="rows to prep without --data")
    p.add_argument(
        "--strategies", default="fsdp,tp", help="2-process strategies to compare the formats under"
    )
    p.add_argument("--precision", default="32-true")
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--every", type=int, default=2, help="checkpoint_every")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not names or any(n not in ("ddp", "fsdp", "tp", "pp") for n in names):
        print("--strategies takes ddp, fsdp, tp, pp (2 processes each)", file=sys.stderr)
        return 2
    if args.steps < 2 or not 1 <= args.every < args.steps:
        print(
            "--every must be at least 1 and below --steps (checkpoints before the last step)", file=sys.stderr
        )
        return 2
    periodic = (args.steps - 1) // args.every
    print(
        f"recipe {args.recipe}, {args.precision}, 2 processes x 1 torch thread, {args.steps} steps, a checkpoint "
        f"every {args.every} ({periodic} before the last step, which the seconds below average)",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="ampflow-checkpoint-") as tmp:
        data = Path(args.data) if args.data else _prep(Path(tmp) / "data", args.recipe, args.limit)
        for name in names:
            for fmt in FORMATS:
                out = Path(tmp) / f"{name}-{fmt}"
                try:
                    res = _train(name, fmt, data, out, args)
                except RuntimeError as exc:
                    print(f"  {name} {fmt}: FAILED {str(exc).strip().splitlines()[-1]}", flush=True)
                    continue
                m = res["metrics"]
                if res["checkpoint_format"] != fmt:
                    raise SystemExit(f"{name}: asked for {fmt}, the run wrote {res['checkpoint_format']}")
                rows.append(
                    (name, fmt, m["checkpoint_s"] / periodic, _size(out), m.get("peak_memory_bytes"), m)
                )
                print(f"  {name} {fmt}: {m['checkpoint_s'] / periodic:.3f} s per checkpoint", flush=True)
    print(
        f"{'strategy':<9} {'format':<8} {'s/checkpoint':>12} {'on disk MiB':>12} {'peak MiB/rank':>14} {'samples/s':>10}"
    )
    for name, fmt, per, size, peak, m in rows:
        print(
            f"{name:<9} {fmt:<8} {per:>12.3f} {size / 2**20:>12.1f} {(peak or 0) / 2**20:>14.0f} "
            f"{m.get('samples_per_s') or 0:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

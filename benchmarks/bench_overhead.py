"""Harness overhead: ampflow's training throughput against a minimal hand-written PyTorch loop.

    python -m benchmarks.bench_overhead                       # synthetic bag-of-words MLP, 32-true
    python -m benchmarks.bench_overhead --precision bf16-mixed --repeats 5 --steps 200
    python -m benchmarks.bench_overhead --recipe tweets-bow --data data/   # a prepared real dataset

Both sides train the same model (same recipe, seed, data tensors, data order, AdamW, clipping, LR
schedule, precision) for the same steps; both exclude the same warm-up steps. ampflow runs the real
``ampflow train`` step in-process (tracking off: its cost is measured by bench_tracking) and reports
samples/s over its timed window's wall clock, bookkeeping included; the hand loop is timed the same
way. The two alternate ``--repeats`` times in one process so drift hits both; medians are compared.
Goal: ratio >= 0.98. Prints the data-wait share ampflow measured too. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SYNTH = "benchmarks.bench_overhead:synthetic"
VOCAB, HIDDEN, CLASSES, N_TRAIN = 2000, 256, 3, 8192


class SyntheticBow:
    """A bag-of-words-sized MLP on random sparse counts (no download, same shape as tweets-bow)."""

    name = "synthetic-bow"
    description = "benchmark stand-in: 2000-d counts, 256 hidden, 3 classes"
    label_column = "label"
    dedupe_columns: list[str] = []
    defaults: dict[str, Any] = {"batch_size": 64, "learning_rate": 1e-3}

    def load_source(self, source: str | None) -> Any:
        raise NotImplementedError("the synthetic benchmark recipe writes its dataset directly")

    def featurize(self, splits: Any, out_dir: Path) -> Any:
        raise NotImplementedError

    def build_model(self, info: dict[str, Any]) -> Any:
        import torch

        class Mlp(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(VOCAB, HIDDEN),
                    torch.nn.ReLU(),
                    torch.nn.Dropout(0.1),
                    torch.nn.Linear(HIDDEN, CLASSES),
                )

            def forward(self, x: Any) -> Any:
                return self.net(x)

        return Mlp()

    def loss(self, logits: Any, labels: Any) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels)


def synthetic() -> SyntheticBow:
    return SyntheticBow()


def write_synthetic(out: Path) -> Path:
    from ampflow.data.manifest import MANIFEST, SCHEMA, hash_arrays
    from ampflow.io import atomic_write_json

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("val", 512), ("test", 512)):
        x = (rng.random((n, VOCAB)) < 0.01).astype(np.float32)
        y = rng.integers(0, CLASSES, n).astype(np.int64)
        arrays[split] = {"x": x, "labels": y}
        (out / split).mkdir(parents=True, exist_ok=True)
        for name, a in arrays[split].items():
            np.save(out / split / f"{name}.npy", a)
    atomic_write_json(
        out / MANIFEST,
        {
            "schema": SCHEMA,
            "recipe": SYNTH,
            "arrays": ["x", "labels"],
            "rows": {s: len(a["labels"]) for s, a in arrays.items()},
            "content_hash": hash_arrays(arrays),
            "info": {},
            "label_names": ["a", "b", "c"],
        },
    )
    return out


def hand_loop(config: Any, recipe: Any, data_dir: Path, steps: int, warmup: int) -> tuple[float, float]:
    """The minimal loop a practitioner writes: samples/s over the steps after ``warmup``, by wall clock
    and by process CPU time."""
    import contextlib

    import torch

    from ampflow.data.manifest import read_manifest
    from ampflow.data.splits import load_split

    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    arrays = load_split(data_dir, "train")
    labels = torch.from_numpy(np.array(arrays.pop("labels"))).to(device)
    inputs = {k: torch.from_numpy(np.array(v)).to(device) for k, v in arrays.items()}
    info = read_manifest(data_dir).get("info", {})
    model = recipe.build_model(info).to(device)
    model.train()
    half = {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(config.precision)
    if half is not None:
        model = model.to(half)
        inputs = {k: v.to(half) if v.is_floating_point() else v for k, v in inputs.items()}
    amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(config.precision)
    torch.set_float32_matmul_precision("high" if config.precision == "tf32" else "highest")
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, 1 - (s - warm) / max(1, steps - warm))
    )
    scaler = torch.amp.GradScaler(device.type) if config.precision == "16-mixed" else None
    bs, n = int(config.batch_size), len(labels)
    epoch, pos, perm = (
        0,
        0,
        torch.from_numpy(np.random.default_rng([config.seed, 0]).permutation(n)).to(device),
    )
    t0 = None
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
        if pos + bs > n:
            epoch, pos = epoch + 1, 0
            perm = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(n)).to(device)
        idx = perm[pos : pos + bs]
        pos += bs
        ctx = torch.amp.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            loss = recipe.loss(
                model(**{k: v.index_select(0, idx) for k, v in inputs.items()}), labels.index_select(0, idx)
            )
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    samples = (steps - warmup) * bs
    return samples / (time.perf_counter() - t0), samples / (time.process_time() - c0)


def ampflow_run(config: Any, data_dir: Path, out: Path) -> dict[str, Any]:
    from ampflow.steps import Paths
    from ampflow.steps import train as train_step

    return train_step.run(config, Paths.of(data=data_dir, out=out))


def _report(kind: str, ours: list[float], theirs: list[float]) -> None:
    ratio = statistics.median(ours) / statistics.median(theirs)
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=True))
    print(
        f"median by {kind}: ampflow {statistics.median(ours):.0f} samples/s, hand loop "
        f"{statistics.median(theirs):.0f} samples/s; ratio {ratio:.3f} (per-repeat {ratios[0]:.3f}-"
        f"{ratios[-1]:.3f}; goal >= 0.98)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=SYNTH)
    p.add_argument("--data", help="prepared dataset (default: a synthetic one in a temp dir)")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])

    os.environ["AMPFLOW_TRACKING"] = "off"
    import torch

    from ampflow.config import RunConfig
    from ampflow.recipes import get_recipe

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    recipe = get_recipe(args.recipe)
    config = (
        RunConfig(recipe=args.recipe, precision=args.precision)
        .with_overrides(
            [
                f"max_steps={args.steps}",
                f"warmup_steps={args.warmup}",
                f"batch_size={args.batch_size}",
                "log_every=1000000",
                "device=auto",
            ]
        )
        .resolve(dict(recipe.defaults))
    )
    with tempfile.TemporaryDirectory(prefix="ampflow-bench-") as tmp:
        data_dir = Path(args.data) if args.data else write_synthetic(Path(tmp) / "data")
        print(
            f"recipe {args.recipe}, precision {args.precision}, batch {args.batch_size}, {args.steps} steps "
            f"({args.warmup} warm-up), {args.repeats} alternating repeats, torch threads "
            f"{torch.get_num_threads()}",
            flush=True,
        )
        ours, theirs, ours_cpu, theirs_cpu, waits = [], [], [], [], []
        for r in range(args.repeats):
            res = ampflow_run(config, data_dir, Path(tmp) / f"run{r}")
            m = res["metrics"]
            ours.append(m["samples_per_s"])
            ours_cpu.append(m["timed_steps"] * int(config.batch_size) / m["timed_cpu_s"])
            waits.append(m["data_wait_frac"])
            wall, cpu = hand_loop(config, recipe, data_dir, args.steps, args.warmup)
            theirs.append(wall)
            theirs_cpu.append(cpu)
            print(
                f"  repeat {r + 1}: ampflow {ours[-1]:.0f} samples/s, hand loop {theirs[-1]:.0f} samples/s, "
                f"ratio {ours[-1] / theirs[-1]:.3f} (by CPU time {ours_cpu[-1] / theirs_cpu[-1]:.3f})",
                flush=True,
            )
    _report("wall clock", ours, theirs)
    # on a shared machine other processes' load moves the wall clock; process CPU time (one thread)
    # measures the work each loop does and is the steadier figure there
    _report("process CPU time", ours_cpu, theirs_cpu)
    wait = statistics.median(waits)
    print(
        f"data-wait share of step time (ampflow): {wait * 100:.2f}% (goal < 2%)"
        if wait is not None and not math.isnan(wait)
        else "data-wait share: n/a"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

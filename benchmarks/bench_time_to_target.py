"""Time to a target accuracy, bf16-mixed against 32-true, on the transformer recipe (tweets-minilm).

    python -m benchmarks.bench_time_to_target
    python -m benchmarks.bench_time_to_target --target 0.6 --val-every 5 --repeats 2 --limit 6000

Samples/s says how fast a step is; what a user banks is the time to the same accuracy. This runs
``ampflow bench`` over 32-true and bf16-mixed (interleaved repeats, same seed, data and order) with
validation every ``--val-every`` steps on the val split and ``stop_at_target``, then prints per
configuration the samples/s, the steps and the training-clock seconds to the target (MLPerf-style
time-to-train, validation and checkpoint writes excluded: :mod:`ampflow.engine.validation`) and the
speedup to target against 32-true, as the compare step computes it (:mod:`ampflow.compare.efficiency`).

On a CPU without native bf16 (``avx512_bf16``/AMX) bf16 is emulated: the table says so, and where its
matmuls run many times slower than fp32 (the rule of :func:`benchmarks.bench_peers.choose_precisions`)
the bf16 modes are left out by default, with a line saying so: one emulated bf16-mixed step of
tweets-minilm took about 42 s on a 2-core AVX2-only EPYC. ``--precisions`` runs them anyway;
``--recipe tweets-bow`` (an embedding bag, not matmul-bound) shows a bf16 comparison on such a CPU. ``--limit`` keeps a stratified subset so the val split (10 %) stays
small enough to validate often.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ampflow.compare.verdict import median_of
from ampflow.config import RunConfig, SweepSpec
from ampflow.steps import Paths, bench
from benchmarks.bench_peers import choose_precisions, matmul_gflops


def _fmt(value: float | None, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def _precisions(asked: str | None) -> tuple[list[str], str]:
    """32-true and bf16-mixed, or what was asked; bf16 left out (and said) where emulated and slow."""
    if asked:
        return asked.split(","), ""
    import torch

    from ampflow.engine.devices import cpu_has_native_bf16

    emulated = not torch.cuda.is_available() and not cpu_has_native_bf16()
    rates = matmul_gflops(threads=0) if emulated else None
    return choose_precisions(None, emulated, rates, default=("32-true", "bf16-mixed"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tweets-minilm")
    ap.add_argument(
        "--precisions", help="default: 32-true,bf16-mixed (bf16 left out where emulated and slow)"
    )
    ap.add_argument("--target", type=float, default=0.60, help="target val accuracy (default: %(default)s)")
    ap.add_argument(
        "--val-every", type=int, default=5, help="steps between validations (default: %(default)s)"
    )
    ap.add_argument(
        "--max-steps", type=int, default=80, help="give up after this many steps (default: %(default)s)"
    )
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default: %(default)s)")
    ap.add_argument(
        "--limit", type=int, default=6000, help="stratified subset of the data (default: %(default)s)"
    )
    ap.add_argument("--out", help="keep the sweep here (default: a temporary directory)")
    args = ap.parse_args(argv)
    os.environ.setdefault("AMPFLOW_TRACKING", "off")
    precisions, left_out = _precisions(args.precisions)
    if left_out:
        print(left_out, flush=True)
    if len(precisions) < 2:
        print(
            "nothing to compare against 32-true: --precisions 32-true,bf16-mixed runs bf16 anyway (quick on --recipe tweets-bow, an embedding bag)",
            flush=True,
        )
        return 0
    settings = [
        f"max_steps={args.max_steps}",
        f"val_every={args.val_every}",
        f"target_accuracy={args.target}",
        "stop_at_target=true",
    ]
    with tempfile.TemporaryDirectory(prefix="ampflow-ttt-") as tmp:
        root = Path(args.out or tmp)
        cfg = RunConfig(recipe=args.recipe).with_overrides(settings)
        summary = bench.run(  # prepares the data itself (the --limit subset), then trains each config
            cfg,
            Paths.of(out=root / "sweep"),
            limit=args.limit,
            sweep=SweepSpec.from_lists(precisions, repeats=args.repeats),
            overrides=settings,
        )
    print(
        f"{args.recipe}, {args.limit} rows, target val accuracy {args.target:g}, validation every "
        f"{args.val_every} steps, at most {args.max_steps} steps, {args.repeats} interleaved repeats (medians)\n"
    )
    print("| precision | samples/s | steps to target | time to target (s) | speedup to target | reached |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in summary["configs"]:
        fig = row.get("figures", {})
        ttt = row.get("time_to_target") or {}
        sps, steps, secs = (
            median_of(fig, k) for k in ("samples_per_s", "steps_to_target", "time_to_target_s")
        )
        speed = ttt.get("speedup")
        name = row["config_id"] + (" (bf16 emulated)" if row.get("bf16_emulated") else "")
        print(
            f"| {name} | {_fmt(sps, '.1f')} | {_fmt(steps, '.0f')} | {_fmt(secs, '.1f')} | "
            f"{'-' if speed is None else f'{speed:.2f}x'} | {ttt.get('reached')}/{ttt.get('of')} |"
        )
    for row in summary["configs"]:
        note = (row.get("time_to_target") or {}).get("note")
        if note:
            print(f"- {row['config_id']}: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

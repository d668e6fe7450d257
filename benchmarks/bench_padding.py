"""Padding-aware batching on tweets-minilm: bucket padding against fixed 64-token padding.

    python -m benchmarks.bench_padding                          # 32-true, 60 steps, 2 seeds (~8 min, 2 cores)
    python -m benchmarks.bench_padding --steps 200 --repeats 3 --precision bf16-mixed
    python -m benchmarks.bench_padding --quick                  # smoke run: 6 steps, 1,500 tweets

Both configurations are the real ``ampflow train`` on the same prepared tweets-minilm split (made once
into ``bench-out/data/tweets-minilm`` when absent), same seed, batch, steps, learning rate and
precision; they differ only in ``pad_to``: ``max`` pads every batch to 64 tokens in the plain seeded
order, ``bucket`` groups the seeded order by length (mega-batches of 50 batches) and pads each batch to
its longest tweet rounded up to the recipe's buckets (multiples of 8 from 16 to 64). Each run is its
own process, repeats interleave (fixed, bucket, fixed, ...) so drift hits both; samples/s and tokens/s
(real tokens: the attention-mask sum) are ampflow's own timed-window figures, medians over repeats with
min-max.

Repeat ``r`` trains both configurations with seed ``--seed + r``: the two orders of one seed hold the
same samples (bucketing regroups each mega-batch), so a pair differs only by bucketing, and the
repeats are independent draws of the data order. ``ampflow evaluate`` scores every run on the whole
test split and McNemar's exact test (``ampflow.compare.stats.mcnemar``) compares each seed's pair. One
seed's significant difference can be that seed's order, not bucketing: the verdict says "equal" when
no seed differs, "bucketing better/worse" only when every seed differs the same way, and otherwise
that the seeds disagree. Goal: bucket >= 1.5x the samples/s of fixed padding at equal test accuracy.
Nothing is asserted.
Exit codes: 0 done, 2 bad arguments, 1 a run failed.
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
from typing import Any

RECIPE = "tweets-minilm"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "bench-out" / "data" / RECIPE
DEFAULT_JSON = ROOT / "bench-out" / "padding.json"
# --quick: 1,500 tweets (150 test examples), so that the two evaluations take seconds
QUICK_DATA, QUICK_ROWS = ROOT / "bench-out" / "data" / f"{RECIPE}-1500", 1500
MODES = {"max": "fixed 64 tokens", "bucket": "buckets of 8, 16-64"}


def ensure_data(data: Path, limit: int | None = None) -> None:
    """Prepare tweets-minilm into ``data`` once (deterministic: later runs reuse it); ``limit`` keeps a
    stratified subset of that many tweets."""
    if (data / "manifest.json").is_file():
        return
    print(f"preparing {RECIPE} into {data} (once)", flush=True)
    data.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ampflow", "prep", "--recipe", RECIPE, "--out", str(data)]
    cmd += ["--limit", str(limit)] if limit else []
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def env() -> dict[str, str]:
    # tracking off: its cost is bench_tracking's subject, not this one's
    return {**os.environ, "AMPFLOW_TRACKING": "off"}


def train(data: Path, out: Path, mode: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One ``ampflow train`` run in its own process; returns its result.json."""
    cmd = [
        sys.executable, "-m", "ampflow", "train", "--recipe", RECIPE, "--data", str(data), "--out", str(out),
        "--precision", args.precision, "--set", f"pad_to={mode}", "--set", f"max_steps={args.steps}",
        "--set", f"warmup_steps={args.warmup}", "--set", f"batch_size={args.batch_size}",
        "--set", "data_loading=memory", "--set", f"seed={seed}",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ampflow train ({mode}) exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def evaluate(data: Path, run: Path, out: Path) -> tuple[float, list[bool]]:
    """``ampflow evaluate`` of ``run`` on the test split: (accuracy, per-example correctness in split order)."""
    cmd = [sys.executable, "-m", "ampflow", "evaluate", "--recipe", RECIPE, "--data", str(data),
           "--checkpoint", str(run), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ampflow evaluate exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return float(result["accuracy"]), [r["label"] == r["prediction"] for r in rows]


def mean_padded_length(data: Path, mode: str, result: dict[str, Any]) -> float:
    """Token positions per sample the timed window computed on (padding included)."""
    if mode == "max":
        return 64.0
    import numpy as np

    from ampflow.data.batching import DataOrder, Position
    from ampflow.data.rows import sequence_extent
    from ampflow.recipes.tweets import MiniLMRecipe

    c = result["config"]
    mask = np.load(data / "train" / "attention_mask.npy")
    order = DataOrder(len(mask), c["batch_size"], c["seed"], 0, 1, None, Position(), sequence_extent(mask),
                      MiniLMRecipe.pad_buckets)  # fmt: skip
    batches = [order.next_global() for _ in range(result["metrics"]["steps"])][c["warmup_steps"] :]
    return statistics.fmean(order.pad_length(e, s) for e, s in batches)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median and min-max of samples/s and tokens/s per mode."""
    out = {}
    for mode, results in runs.items():
        sps = [r["metrics"]["samples_per_s"] for r in results]
        tps = [r["metrics"]["tokens_per_s"] for r in results]
        out[mode] = {
            "samples_per_s": statistics.median(sps),
            "samples_per_s_min": min(sps),
            "samples_per_s_max": max(sps),
            "tokens_per_s": statistics.median(tps),
            "step_time_p50_s": statistics.median(r["metrics"]["step_time_p50_s"] for r in results),
            "real_tokens_per_sample": statistics.median(t / s for t, s in zip(tps, sps, strict=True)),
        }
    return out


def table(summary: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> str:
    base = summary["max"]["samples_per_s"]
    lines = [
        "| padding | samples/s (min-max) | speedup | tokens/s | real tokens / padded positions | step p50 (ms) "
        "| test accuracy, per seed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, s in summary.items():
        e = extra[mode]
        share = s["real_tokens_per_sample"] / e["padded_length"]
        accuracies = " / ".join(f"{a:.4f}" for a in e["accuracy"])
        lines.append(
            f"| {MODES[mode]} | {s['samples_per_s']:.1f} ({s['samples_per_s_min']:.1f}-{s['samples_per_s_max']:.1f}) "
            f"| {s['samples_per_s'] / base:.2f}x | {s['tokens_per_s']:.0f} | {share:.0%} of {e['padded_length']:.1f} "
            f"| {s['step_time_p50_s'] * 1e3:.0f} | {accuracies} |"
        )
    return "\n".join(lines)


def accuracy_verdict(tests: list[Any]) -> str:
    """One line on accuracy parity over the seeds' paired tests (``PairedTest``, fixed as reference).

    Equal when no seed's pair differs; a direction only when every seed differs the same way; else
    the seeds disagree, which says the difference is the data order's, not bucketing's.
    """
    better = sum(1 for t in tests if t.p_value < t.alpha and t.only_candidate > t.only_reference)
    worse = sum(1 for t in tests if t.p_value < t.alpha and t.only_candidate < t.only_reference)
    if not better and not worse:
        return f"equal within the paired test's resolution in all {len(tests)} seed(s)"
    if better == len(tests) or worse == len(tests):
        way = "better" if better else "worse"
        return f"bucketing significantly {way} in every one of {len(tests)} seed(s)"
    return (
        f"the seeds disagree ({better} significantly better, {worse} significantly worse, "
        f"{len(tests) - better - worse} equal of {len(tests)}): a seed's data order, not bucketing"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_padding", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepared tweets-minilm (made once if absent)")
    p.add_argument("--precision", default="32-true", help="precision mode of both runs (default 32-true)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="untimed leading steps (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument(
        "--repeats", type=int, default=2,
        help="runs per configuration, interleaved; repeat r uses seed --seed + r (default 2)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the first repeat (default 0)")
    p.add_argument("--json", default=str(DEFAULT_JSON), help=f"figures as JSON (default {DEFAULT_JSON})")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 6 steps, 2 untimed, 1 repeat, 1,500 tweets prepared"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 6, 2, 1
        if args.data == str(DEFAULT_DATA):
            args.data = str(QUICK_DATA)
    if args.steps <= args.warmup or min(args.warmup, args.batch_size - 1, args.repeats - 1) < 0:
        p.error("need --steps > --warmup >= 0, --batch-size >= 1 and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from ampflow.compare.stats import mcnemar

    data = Path(args.data)
    ensure_data(data, QUICK_ROWS if data == QUICK_DATA else None)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    correct: dict[str, list[list[bool]]] = {m: [] for m in MODES}
    accuracy: dict[str, list[float]] = {m: [] for m in MODES}
    seeds = [args.seed + r for r in range(args.repeats)]
    with tempfile.TemporaryDirectory(prefix="bench-padding-") as tmp:
        try:
            for r, seed in enumerate(seeds):
                for mode in MODES:
                    out = Path(tmp) / f"{mode}-r{r}"
                    result = train(data, out, mode, args, seed)
                    runs[mode].append(result)
                    m = result["metrics"]
                    print(
                        f"{mode} seed {seed}: {m['samples_per_s']:.1f} samples/s, {m['tokens_per_s']:.0f} tokens/s",
                        flush=True,
                    )
            # evaluation after every timed run: it never overlaps a training window
            for r in range(args.repeats):
                for mode in MODES:
                    acc, hits = evaluate(data, Path(tmp) / f"{mode}-r{r}", Path(tmp) / f"eval-{mode}-r{r}")
                    accuracy[mode].append(acc)
                    correct[mode].append(hits)
        except RuntimeError as exc:
            print(f"bench_padding: {exc}", file=sys.stderr)
            return 1
    extra = {
        mode: {
            "accuracy": accuracy[mode],
            "padded_length": statistics.median(mean_padded_length(data, mode, run) for run in runs[mode]),
        }
        for mode in MODES
    }
    summary = summarize(runs)
    paired = [mcnemar(f, b) for f, b in zip(correct["max"], correct["bucket"], strict=True)]
    speedup = summary["bucket"]["samples_per_s"] / summary["max"]["samples_per_s"]
    print(f"\ntweets-minilm {args.precision}, batch {args.batch_size}, {args.steps} steps ({args.warmup} untimed), "
          f"seeds {', '.join(map(str, seeds))}, medians:")  # fmt: skip
    print(table(summary, extra))
    for seed, t in zip(seeds, paired, strict=True):
        print(
            f"seed {seed}: McNemar exact, n={t.n}: {t.only_reference} only fixed right, {t.only_candidate} only "
            f"bucket right, p={t.p_value:.3f} (smallest detectable difference {t.min_detectable_pp:.2f} pp)"
        )
    verdict = accuracy_verdict(paired)
    print(f"test accuracy: {verdict}; goal: >= 1.5x samples/s at equal accuracy -> {speedup:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "schema": "ampflow.bench.padding/2",
                "precision": args.precision,
                "steps": args.steps,
                "warmup": args.warmup,
                "batch_size": args.batch_size,
                "seeds": seeds,
                "summary": summary,
                "evaluation": extra,
                "paired_tests": [t.to_dict() for t in paired],
                "accuracy_verdict": verdict,
                "speedup": speedup,
                "runs": {m: [r["metrics"] for r in rs] for m, rs in runs.items()},
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

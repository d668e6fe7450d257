"""The precision table: throughput, peak memory and accuracy per precision mode, for each recipe.

    python -m benchmarks.bench_precision_table
    python -m benchmarks.bench_precision_table --recipes tweets-bow --precisions 32-true,bf16-mixed

Runs ``ampflow bench`` once per recipe (each config in its own process, one at a time, same seed and
data) and prints one table. On a CPU without native bf16 the bf16 rows are emulated: slower, and the
table says so instead of hiding it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from ampflow.config import RunConfig, SweepSpec
from ampflow.steps import Paths, bench

# steps per recipe: enough for a steady-state window, short enough for a 2-core machine
DEFAULT_STEPS = {"tweets-bow": 300, "mnist-cnn": 150, "tweets-minilm": 40}


def _row(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    m = result["metrics"]
    return {
        "precision": result["precision"] + (" (compiled)" if result.get("compile") else ""),
        "samples_per_s": m.get("samples_per_s"),
        "p50": m.get("step_time_p50_s"),
        "p90": m.get("step_time_p90_s"),
        "peak_mb": (m.get("peak_memory_bytes") or 0) / 2**20,
        "acc": ev.get("accuracy"),
        "f1": ev.get("macro_f1"),
        "emulated": bool(result.get("bf16_emulated")) and "bf16" in result["precision"],
        "data_wait": m.get("data_wait_frac") or 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="tweets-bow,mnist-cnn,tweets-minilm")
    ap.add_argument("--precisions", default="32-true,tf32,bf16-mixed,bf16-true")
    ap.add_argument("--out", help="keep the sweeps here (default: a temporary directory)")
    args = ap.parse_args(argv)
    # tracking has its own benchmark; here it would only add a writer thread to every timed run
    os.environ.setdefault("AMPFLOW_TRACKING", "off")
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory(prefix="ampflow-table-") as tmp:
        root = Path(args.out or tmp)
        lines = [
            "| recipe | precision | samples/s | speedup | step p50 / p90 (ms) | data wait | peak MB | accuracy | macro-F1 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for recipe in args.recipes.split(","):
            cfg = RunConfig(recipe=recipe).with_overrides([f"max_steps={DEFAULT_STEPS.get(recipe, 100)}"])
            summary = bench.run(
                cfg,
                Paths.of(out=root / recipe),
                sweep=SweepSpec.from_lists(precisions),
                overrides=[f"max_steps={cfg.max_steps}"],
            )
            rows = [_row(Path(r["run_dir"])) for r in summary["runs"] if r["status"] == "ok"]
            base = next((r for r in rows if r["precision"] == "32-true"), None)
            for r in rows:
                speed = (
                    r["samples_per_s"] / base["samples_per_s"]
                    if base and base["samples_per_s"]
                    else float("nan")
                )
                note = " (bf16 emulated)" if r["emulated"] else ""
                lines.append(
                    f"| {recipe} | {r['precision']}{note} | {r['samples_per_s']:.1f} | {speed:.2f}x | "
                    f"{r['p50'] * 1e3:.1f} / {r['p90'] * 1e3:.1f} | {r['data_wait']:.2%} | {r['peak_mb']:.0f} | {r['acc']:.4f} | {r['f1']:.4f} |"
                )
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peers on the transformer workload: ampflow against a hand-written loop, Lightning Fabric and Accelerate.

    make bench-venv                                              # the peers' venv (.venv-bench), once
    .venv-bench/bin/python -m benchmarks.bench_peers             # the peer table (about 6 min per precision, 2 cores)
    .venv-bench/bin/python -m benchmarks.bench_peers --quick     # smoke run: 1 repeat, 4 steps, 32-true
    python -m benchmarks.bench_peers --precisions 32-true,bf16-mixed --steps 36 --warmup 6 --repeats 3

The workload is tweets-minilm exactly as ``ampflow train`` runs it: the recipe's model (pretrained
MiniLM-L6 encoder, mean pooling, linear head) in train mode (dropout on), batch 32 x 64 tokens, AdamW
(lr 5e-5, the run's weight decay), gradient clipping at 1.0, linear LR warm-up then decay, the same
seeded per-epoch permutation of the same prepared train split, every batch padded to 64 tokens
(``pad_to=max``: ``bench_padding`` measures bucketing), on the CPU (or CUDA when present).
Every peer trains ``--steps`` optimizer steps and is timed over the steps after ``--warmup``: samples/s
= timed samples / wall seconds from the start of the first timed step to the end of the last one
(ampflow reports the same figure from its own throughput window). Each run is its own process, so
no peer inherits another's allocator, thread-pool or import state; repeats are interleaved (every peer
once per precision, then again, the order rotated each repeat) so slow drift of the machine hits all.
Prints per precision the median samples/s, the spread (min-max over repeats) and the ratio of each
peer's median to the fastest peer's; writes every run's figures as JSON (``--json``). Nothing is
asserted. bf16 on a CPU without ``avx512_bf16``/``amx_bf16`` is emulated; the table says so, and where
its matmuls run at a fraction of fp32's speed (on an AVX2-only CPU about 1 %: a bf16 run would take
hours) the default leaves the bf16 modes out with a line saying so; ``--precisions`` runs them anyway.

The peers (Lightning 2.6.6, Accelerate 1.15.0, transformers 5.24.0) live in ``.venv-bench`` and never in
ampflow's dependencies; run from another interpreter, this module starts its runs with
``.venv-bench/bin/python`` when it exists (``--python`` to choose), and reports a peer that does not
import there as missing instead of failing. Exit codes: 0 done, 2 bad arguments, 1 no run succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECIPE = "tweets-minilm"
PEERS = ("ampflow", "hand", "fabric", "accelerate")
PEER_NAMES = {
    "ampflow": "ampflow",
    "hand": "hand-written loop",
    "fabric": "Lightning Fabric",
    "accelerate": "Accelerate",
}
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
DEFAULT_DATA = ROOT / "bench-out" / "data" / RECIPE
DEFAULT_JSON = ROOT / "bench-out" / "peers.json"
SCHEMA = "ampflow.bench.peers/1"
# bf16 matmuls this many times slower than fp32 (emulated): the bf16 modes are left out by default
SLOW_BF16 = 4.0
# a worker that prints this line (then exits 3) could not import its peer: reported as missing
MISSING = "PEER-MISSING:"


# -- the shared workload ------------------------------------------------------------------------


def _permutation(seed: int, epoch: int, n: int) -> Any:
    """Epoch ``epoch``'s sample order, the same seeded permutation ampflow's DataOrder takes."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


def _batches(seed: int, n: int, batch: int, steps: int) -> list[Any]:
    """Index arrays of ``steps`` consecutive batches (the last partial batch of an epoch dropped)."""
    out, epoch, pos, perm = [], 0, 0, _permutation(seed, 0, n)
    for _ in range(steps):
        if pos + batch > n:
            epoch, pos, perm = epoch + 1, 0, _permutation(seed, epoch + 1, n)
        out.append(perm[pos : pos + batch])
        pos += batch
    return out


def _lr_multiplier(total: int, warm: int) -> Any:
    """Linear warm-up over ``warm`` steps then linear decay to 0 at ``total`` (ampflow's default)."""

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, 1.0 - (step - warm) / max(1, total - warm))

    return f


class Workload:
    """What every peer gets: the resolved config, the train split as tensors, the model and its loss.

    ``inputs`` maps ``input_ids``/``attention_mask`` to int64 ``(n, 64)`` tensors, ``labels`` is
    int64 ``(n,)``; ``batches`` are the index tensors of every step (``batch_size`` each).
    """

    def __init__(self, args: argparse.Namespace):
        import numpy as np
        import torch

        from ampflow.data.manifest import dataset_info, read_manifest
        from ampflow.recipes import get_recipe

        self.recipe = get_recipe(RECIPE)
        self.config = run_config(args).resolve(dict(self.recipe.defaults))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.info = dataset_info(read_manifest(args.data))
        torch.manual_seed(self.config.seed)
        folder = Path(args.data) / "train"
        arrays = {k: torch.from_numpy(np.load(folder / f"{k}.npy")) for k in ("input_ids", "attention_mask")}
        self.inputs = {k: v.to(self.device) for k, v in arrays.items()}
        self.labels = torch.from_numpy(np.load(folder / "labels.npy")).long().to(self.device)
        n = int(self.labels.shape[0])
        self.batches = [
            torch.from_numpy(b).to(self.device)
            for b in _batches(self.config.seed, n, int(self.config.batch_size), args.steps)
        ]
        _, self.lr_warm = self.config.lr_plan(args.steps)
        self.steps, self.warmup = args.steps, args.warmup

    def model(self) -> Any:
        """The recipe's model in train mode (``from_pretrained`` hands back eval mode: dropout off)."""
        model = self.recipe.build_model(self.info).to(self.device)
        model.train()
        return model

    def batch(self, step: int) -> tuple[dict[str, Any], Any]:
        idx = self.batches[step]
        return {k: v.index_select(0, idx) for k, v in self.inputs.items()}, self.labels.index_select(0, idx)

    def optimizer(self, params: Any) -> Any:
        import torch

        return torch.optim.AdamW(
            params, lr=float(self.config.learning_rate), weight_decay=self.config.weight_decay
        )

    def scheduler(self, optimizer: Any) -> Any:
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_multiplier(self.steps, self.lr_warm))


class Clock:
    """The timed window of a peer loop: wall and process-CPU seconds from the start of step ``warmup``."""

    def __init__(self, device: Any, warmup: int):
        self.device, self.warmup = device, warmup
        self.t0 = self.c0 = 0.0

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before(self, step: int) -> None:
        if step == self.warmup:
            self._sync()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        self._sync()
        return time.perf_counter() - self.t0, time.process_time() - self.c0


def _figures(w: Workload, wall: float, cpu: float, loss: Any) -> dict[str, Any]:
    samples = (w.steps - w.warmup) * int(w.config.batch_size)
    return {
        "samples_per_s": samples / wall,
        "samples_per_cpu_s": samples / cpu if cpu > 0 else None,
        "timed_steps": w.steps - w.warmup,
        "timed_wall_s": wall,
        "final_loss": float(loss),
    }


# -- the peers ----------------------------------------------------------------------------------


def run_hand(w: Workload, precision: str) -> dict[str, Any]:
    """The loop a practitioner writes from the PyTorch docs (nanoGPT's precision in three lines)."""
    import torch

    model = w.model()
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    amp = precision == "bf16-mixed"
    opt = w.optimizer(model.parameters())
    sched = w.scheduler(opt)
    clock = Clock(w.device, w.warmup)
    for step in range(w.steps):
        clock.before(step)
        inputs, labels = w.batch(step)
        with torch.autocast(w.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = w.recipe.loss(model(**inputs), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), w.config.clip_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    wall, cpu = clock.stop()
    return _figures(w, wall, cpu, loss.detach())


def run_fabric(w: Workload, precision: str) -> dict[str, Any]:
    """Lightning Fabric: ``setup``, ``backward``, ``clip_gradients``; its precision plugin does the rest."""
    try:
        from lightning.fabric import Fabric
    except ImportError as e:
        raise PeerMissing(f"lightning ({e})") from e

    fabric = Fabric(accelerator=w.device.type, devices=1, precision=precision)
    with fabric.init_module():
        model = w.model()
    opt = w.optimizer(model.parameters())
    model, opt = fabric.setup(model, opt)
    sched = w.scheduler(opt)
    clock = Clock(w.device, w.warmup)
    for step in range(w.steps):
        clock.before(step)
        inputs, labels = w.batch(step)
        loss = w.recipe.loss(model(**inputs), labels)
        fabric.backward(loss)
        fabric.clip_gradients(model, opt, max_norm=w.config.clip_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    wall, cpu = clock.stop()
    return _figures(w, wall, cpu, loss.detach())


def run_accelerate(w: Workload, precision: str) -> dict[str, Any]:
    """Hugging Face Accelerate: ``prepare``, ``backward``, ``clip_grad_norm_``.

    Accelerate has no bf16-true mode: as its users do, the model is cast to bf16 before ``prepare``
    with ``mixed_precision="no"``.
    """
    try:
        import torch
        from accelerate import Accelerator
    except ImportError as e:
        raise PeerMissing(f"accelerate ({e})") from e

    acc = Accelerator(
        mixed_precision="bf16" if precision == "bf16-mixed" else "no", cpu=w.device.type == "cpu"
    )
    model = w.model()
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    opt = w.optimizer(model.parameters())
    sched = w.scheduler(opt)
    model, opt, sched = acc.prepare(model, opt, sched)
    clock = Clock(w.device, w.warmup)
    for step in range(w.steps):
        clock.before(step)
        inputs, labels = w.batch(step)
        # prepare() wraps forward in autocast for bf16-mixed; the loss is computed outside it
        loss = w.recipe.loss(model(**inputs), labels)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), w.config.clip_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    wall, cpu = clock.stop()
    return _figures(w, wall, cpu, loss.detach())


def run_ampflow(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """``ampflow train`` itself (in this process, tracking off: bench_tracking measures that cost);
    the figures are the ones its result.json reports."""
    from ampflow.steps import Paths
    from ampflow.steps import train as train_step

    config = run_config(args)
    with tempfile.TemporaryDirectory(prefix="ampflow-peers-") as tmp:
        res = train_step.run(config, Paths.of(data=Path(args.data), out=Path(tmp) / "run"))
    m = res["metrics"]
    return {
        "samples_per_s": m["samples_per_s"],
        "samples_per_cpu_s": m["timed_steps"] * m["batch_size"] / m["timed_cpu_s"]
        if m["timed_cpu_s"]
        else None,
        "timed_steps": m["timed_steps"],
        "timed_wall_s": m["timed_wall_s"],
        "final_loss": m["final_train_loss"],
        "data_wait_frac": m["data_wait_frac"],
    }


class PeerMissing(RuntimeError):
    """The peer's package does not import in this interpreter."""


def run_config(args: argparse.Namespace) -> Any:
    """The RunConfig every peer trains: the recipe's defaults plus the benchmark's steps and batch."""
    from ampflow.config import RunConfig

    return RunConfig(recipe=RECIPE, precision=args.precision).with_overrides(
        [
            f"max_steps={args.steps}",
            f"warmup_steps={args.warmup}",
            f"batch_size={args.batch_size}",
            f"seed={args.seed}",
            "clip_grad_norm=1.0",
            "log_every=1000000",
            "checkpoint_every=0",
            # every peer pads to the full 64 tokens; bench_padding measures what bucketing gains
            "pad_to=max",
        ]
    )


def worker(args: argparse.Namespace) -> int:
    """One peer, one precision, one process: writes its figures to ``--result``."""
    os.environ["AMPFLOW_TRACKING"] = "off"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        if args.worker == "ampflow":
            figures = run_ampflow(args, args.precision)
        else:
            w = Workload(args)
            run = {"hand": run_hand, "fabric": run_fabric, "accelerate": run_accelerate}[args.worker]
            figures = run(w, args.precision)
    except PeerMissing as e:
        print(f"{MISSING} {e}", flush=True)
        return 3
    figures.update(
        peer=args.worker,
        precision=args.precision,
        process_s=time.perf_counter() - t0,
        torch_threads=torch.get_num_threads(),
        versions=_versions(),
    )
    Path(args.result).write_text(json.dumps(figures))
    return 0


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("torch", "lightning", "accelerate", "transformers", "ampflow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# -- the driver ---------------------------------------------------------------------------------


def ensure_data(data: Path, python: str) -> None:
    """Prepare tweets-minilm into ``data`` once (reused by later runs: the dataset is deterministic)."""
    if (data / "manifest.json").is_file():
        return
    print(f"preparing {RECIPE} into {data} (once)", flush=True)
    data.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "ampflow", "prep", "--recipe", RECIPE, "--out", str(data)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def order_of(peers: list[str], repeat: int) -> list[str]:
    """The peers of repeat ``repeat`` (0-based), rotated so that each runs first in turn."""
    k = repeat % len(peers)
    return peers[k:] + peers[:k]


def summarize(runs: list[dict[str, Any]], peers: list[str], precisions: list[str]) -> list[dict[str, Any]]:
    """One row per (precision, peer) that ran: median, min, max samples/s and the median's ratio to
    the fastest peer's median in that precision (``vs_fastest``, 1.0 for the fastest)."""
    rows = []
    for p in precisions:
        per = {
            peer: [r["samples_per_s"] for r in runs if r["precision"] == p and r["peer"] == peer]
            for peer in peers
        }
        medians = {peer: statistics.median(v) for peer, v in per.items() if v}
        if not medians:
            continue
        fastest = max(medians.values())
        for peer, med in medians.items():
            cpu = [
                r["samples_per_cpu_s"]
                for r in runs
                if r["precision"] == p and r["peer"] == peer and r.get("samples_per_cpu_s")
            ]
            loss = [r["final_loss"] for r in runs if r["precision"] == p and r["peer"] == peer]
            rows.append(
                {
                    "precision": p,
                    "peer": peer,
                    "repeats": len(per[peer]),
                    "samples_per_s_median": med,
                    "samples_per_s_min": min(per[peer]),
                    "samples_per_s_max": max(per[peer]),
                    "vs_fastest": med / fastest,
                    "samples_per_cpu_s_median": statistics.median(cpu) if cpu else None,
                    "final_loss_median": statistics.median(loss) if loss else None,
                }
            )
    return rows


def table(rows: list[dict[str, Any]], emulated: bool) -> str:
    """The markdown table of :func:`summarize`'s rows."""
    lines = [
        "| precision | peer | samples/s (median) | min-max | vs fastest | final loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["precision"] + (" (emulated)" if emulated and "bf16" in r["precision"] else "")
        lines.append(
            f"| {name} | {PEER_NAMES[r['peer']]} | {r['samples_per_s_median']:.1f} | "
            f"{r['samples_per_s_min']:.1f}-{r['samples_per_s_max']:.1f} | {r['vs_fastest']:.3f}x | "
            f"{r['final_loss_median']:.4f} |"
        )
    return "\n".join(lines)


def _worker_argv(python: str, args: argparse.Namespace, peer: str, precision: str, result: Path) -> list[str]:
    argv = [python, "-m", "benchmarks.bench_peers", "--worker", peer, "--precision", precision]
    argv += ["--data", str(args.data), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    argv += ["--batch-size", str(args.batch_size), "--seed", str(args.seed), "--result", str(result)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def matmul_gflops(threads: int) -> dict[str, float] | None:
    """Dense matmul GFLOP/s of this CPU in fp32 and bf16, with ``threads`` torch threads (0: torch's
    default): :func:`ampflow.engine.peaks.probe_matmul_peak`, the probe behind MFU's peak (square
    matmuls grown until one takes 20 ms, the best of about a second each; a few seconds in all where
    bf16 is emulated). None when a dtype cannot be measured (then nothing is left out)."""
    import torch

    from ampflow.engine.peaks import probe_matmul_peak

    if threads:
        torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    rates = {}
    for name in ("fp32", "bf16"):
        measured = probe_matmul_peak(cpu, name)
        if measured is None:
            return None
        rates[name] = measured[0] / 1e9
    return rates


def choose_precisions(
    asked: str | None,
    emulated: bool,
    rates: dict[str, float] | None,
    default: tuple[str, ...] = PRECISIONS,
) -> tuple[list[str], str]:
    """The precisions to run and a line saying what was left out and why ("" when nothing was).

    Asked for explicitly: exactly those. Otherwise all of ``default`` (:data:`PRECISIONS`), except that on a CPU
    whose bf16 is emulated and whose bf16 matmuls run more than :data:`SLOW_BF16` times slower than
    fp32 the bf16 modes are left out: there every bf16 run would take many times the whole default
    benchmark (measured: 0.3 against 28 GFLOP/s on a 2-core AVX2-only EPYC).
    """
    if asked:
        return asked.split(","), ""
    if not (emulated and rates and rates["fp32"] > SLOW_BF16 * rates["bf16"]):
        return list(default), ""
    left = [p for p in default if "bf16" in p]
    return [p for p in default if p not in left], (
        f"{' and '.join(left)} left out: bf16 is emulated on this CPU and its matmuls ran "
        f"{rates['fp32'] / rates['bf16']:.0f}x slower than fp32 ({rates['bf16']:.1f} against "
        f"{rates['fp32']:.1f} GFLOP/s); --precisions {','.join(default)} runs them anyway"
    )


def drive(args: argparse.Namespace) -> int:
    python = args.python or (str(BENCH_PYTHON) if BENCH_PYTHON.exists() else sys.executable)
    peers = args.peers.split(",")
    data = Path(args.data)
    ensure_data(data, python)
    import torch

    from ampflow.engine.devices import cpu_has_native_bf16

    emulated = not torch.cuda.is_available() and not cpu_has_native_bf16()
    rates = matmul_gflops(args.threads) if emulated else None
    precisions, left_out = choose_precisions(args.precisions, emulated, rates)
    print(
        f"{RECIPE}: batch {args.batch_size} x 64 tokens, {args.steps} steps ({args.warmup} untimed), "
        f"{args.repeats} interleaved repeats, peers {', '.join(peers)}, precisions {', '.join(precisions)}; "
        f"python {python}" + ("; bf16 is emulated on this CPU (no avx512_bf16/amx_bf16)" if emulated else ""),
        flush=True,
    )
    if left_out:
        print(left_out, flush=True)
    runs: list[dict[str, Any]] = []
    failed: list[str] = []
    missing: dict[str, str] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AMPFLOW_TRACKING": "off", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="ampflow-peers-") as tmp:
        for r in range(args.repeats):
            for p in precisions:
                for peer in order_of(peers, r):
                    if peer in missing:
                        continue
                    result = Path(tmp) / f"{peer}-{p}-{r}.json"
                    t0 = time.perf_counter()
                    proc = subprocess.run(
                        _worker_argv(python, args, peer, p, result),
                        env=env,
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if proc.returncode == 3 and MISSING in proc.stdout:
                        missing[peer] = proc.stdout.split(MISSING, 1)[1].strip()
                        print(f"  {peer}: not installed in {python}: {missing[peer]}", flush=True)
                        continue
                    if proc.returncode != 0 or not result.is_file():
                        failed.append(f"{peer}/{p}/r{r}")
                        tail = "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
                        print(
                            f"  repeat {r + 1} {p} {peer}: FAILED (exit {proc.returncode})\n    {tail}",
                            flush=True,
                        )
                        continue
                    fig = json.loads(result.read_text())
                    fig["repeat"] = r
                    runs.append(fig)
                    print(
                        f"  repeat {r + 1} {p:<10} {peer:<10} {fig['samples_per_s']:7.2f} samples/s "
                        f"(loss {fig['final_loss']:.4f}, process {time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
    rows = summarize(runs, peers, precisions)
    print()
    print(table(rows, emulated))
    for p in precisions:
        mine = next((x for x in rows if x["precision"] == p and x["peer"] == "ampflow"), None)
        others = [x for x in rows if x["precision"] == p and x["peer"] != "ampflow"]
        if mine and others:
            best = max(others, key=lambda x: x["samples_per_s_median"])
            print(
                f"{p}: ampflow / fastest other peer ({PEER_NAMES[best['peer']]}) = "
                f"{mine['samples_per_s_median'] / best['samples_per_s_median']:.3f} (goal >= 1.00; "
                "a difference inside the min-max spread is noise)"
            )
    out = {
        "schema": SCHEMA,
        "recipe": RECIPE,
        "settings": {
            k: getattr(args, k) for k in ("steps", "warmup", "repeats", "batch_size", "seed", "threads")
        },
        "bf16_emulated": emulated,
        "matmul_gflops": rates,
        "precisions": precisions,
        "left_out": left_out or None,
        "missing": missing,
        "failed": failed,
        "summary": rows,
        "runs": runs,
    }
    from ampflow.io import atomic_write_json

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), out)
    print(f"figures: {args.json}")
    return 0 if runs else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_peers", description=__doc__.splitlines()[0])
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument(
        "--precisions",
        help=f"comma-separated, of {', '.join(PRECISIONS)} (default: all; bf16 only where it is not "
        "emulated at a fraction of fp32's speed)",
    )
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per run (default 16)")
    p.add_argument("--warmup", type=int, default=4, help="leading steps left out of the timing (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: torch's own)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepared tweets-minilm (made once if absent)")
    p.add_argument("--json", default=str(DEFAULT_JSON), help="where the figures go")
    p.add_argument("--python", help="interpreter of the runs (default .venv-bench's when it exists)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat of 4 steps (1 untimed), 32-true")
    p.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv if argv is not None else sys.argv[1:])
    if args.worker:
        return worker(args)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.precisions = 4, 1, 1, "32-true"
    bad = [x for x in args.peers.split(",") if x not in PEERS] + [
        x for x in (args.precisions or "").split(",") if x and x not in PRECISIONS
    ]
    if bad:
        print(
            f"bench_peers: unknown peer or precision {bad[0]!r}; peers: {', '.join(PEERS)}; "
            f"precisions: {', '.join(PRECISIONS)}",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.warmup < args.steps or args.repeats < 1:
        print("bench_peers: need 0 <= --warmup < --steps and --repeats >= 1", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return drive(args)
    return 130


if __name__ == "__main__":
    sys.exit(main())

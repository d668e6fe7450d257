"""``ampflow bench``: prep once, then train and evaluate each configuration of a sweep, then compare.

    ampflow bench --recipe tweets-bow --precisions 32-true,bf16-mixed --compile off --out bench/
    ampflow bench --recipe mnist-cnn --precisions 32-true,bf16-mixed,bf16-true --compile off,on \\
        --repeats 3 --out bench/ --set max_steps=200
    ampflow bench --recipe tweets-bow --precisions 32-true --strategies single,ddp,fsdp \\
        --nproc-per-node 2 --out bench/

Every configuration trains in its own ``ampflow train`` process, one after another, never two at a
time: a fresh process gives each config the same allocator, thread pool and compile cache state, and
timing two configs at once on shared cores would measure contention, not precision. Repeats are
interleaved (all configs once, then again) so slow drift of the machine hits every config alike.
The same seed and the same prepared data serve every configuration.

Strategies are a dimension of the sweep like precisions (``SweepSpec.entries``: repeat, precision,
compile, then strategy innermost). A configuration of a strategy other than ``single`` trains under
torchrun on this machine (:func:`ampflow.commands.torchrun_program`: ``--nproc-per-node``
processes, a free port each time); evaluation stays one plain ``ampflow evaluate`` process, which
reads a sharded checkpoint's DCP shards into the whole model (:mod:`ampflow.engine.checkpoint`). Layouts that cannot work (a process count below 2, a mesh that does not fit it, a recipe
without a tensor-parallel plan or a pipeline split) are refused before anything trains.

Layout of ``--out``::

    data/                      the prepared dataset (prep runs once)
    runs/<config-id>/          result.json, checkpoints, eval/eval.json, train.log
    summary.json, report.md    the comparison (and report.html when the tracking extra is there)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ampflow import locking
from ampflow.commands import plan_step, torchrun_program
from ampflow.compare.markdown import closing_lines
from ampflow.config import (
    BASELINE_PRECISION,
    CUDA_ONLY_PRECISIONS,
    PRECISIONS,
    STRATEGIES,
    ConfigError,
    RunConfig,
    SweepEntry,
    SweepSpec,
    parse_overrides,
)
from ampflow.steps import Paths, add_set_argument

HELP = "prep once, train + evaluate every precision/compile/strategy configuration, print the comparison"
# the process count of a distributed configuration when --nproc-per-node is not given
DEFAULT_NPROC_PER_NODE = 2
# settings that are the sweep's own dimensions: --precisions, --compile, --strategies set them
_SWEPT_KEYS = {"precision": "--precisions", "compile": "--compile", "strategy": "--strategies"}
# `--help` lists every RunConfig key: this step passes them all on
TAKES_ALL_SET_KEYS = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", required=True, help="built-in recipe name or module:function")
    p.add_argument("--out", required=True, help="output directory (data/, runs/, summary.json, report.md)")
    p.add_argument(
        "--precisions",
        default="32-true,bf16-mixed",
        help=f"comma-separated precision modes ({', '.join(PRECISIONS)}); default: %(default)s",
    )
    p.add_argument("--compile", dest="compile_modes", default="off", help="off, on, or off,on (default: off)")
    p.add_argument(
        "--strategies",
        default="single",
        help=f"comma-separated strategies ({', '.join(STRATEGIES)}); all but single train under torchrun "
        "with --nproc-per-node processes; default: %(default)s",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=DEFAULT_NPROC_PER_NODE,
        help="processes per distributed configuration (torchrun --nproc_per_node; at least 2); "
        "default: %(default)s",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="train each configuration N times (medians, spread)"
    )
    p.add_argument("--baseline", default=BASELINE_PRECISION, help="precision the others are compared with")
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy tolerance in percentage points")
    p.add_argument("--source", help="data file or fsspec URI instead of the recipe's built-in data")
    p.add_argument("--limit", type=int, help="keep a stratified subset of N rows (quick runs)")
    p.add_argument(
        "--engine",
        choices=("local", "kfp-local"),
        default="local",
        help="local: subprocesses (default); kfp-local: the KFP benchmark pipeline via kfp.local",
    )
    add_set_argument(p, "configuration override for every run (repeatable), e.g. --set max_steps=100")


class SweepFailed(RuntimeError):
    """No configuration of a sweep trained: nothing to compare (exit 1, one line; each failure's log
    tail was printed as it happened)."""


def cli(args: argparse.Namespace) -> int:
    sweep = SweepSpec.from_words(
        args.precisions, args.compile_modes, args.repeats, args.baseline, args.strategies
    )
    _refuse_swept_overrides(args.overrides)
    config = RunConfig(recipe=args.recipe).with_overrides(args.overrides)
    if args.engine == "kfp-local":
        if sweep.distributed:
            raise ConfigError(
                "--engine kfp-local sweeps single-process training only; use --strategies single "
                "or --engine local"
            )
        run_benchmark_locally = _kfp_local_runner()
        summary = run_benchmark_locally(
            recipe=args.recipe,
            sweep=sweep,
            source=args.source,
            out=args.out,
            overrides=args.overrides,
            tolerance=args.tolerance,
            limit=args.limit,
        )
        print(summary.get("markdown", json.dumps(summary, indent=2)))
        print(closing_lines(summary, Path(args.out)))
        return 0
    try:
        summary = run(
            config,
            Paths.of(out=args.out, source=args.source),
            sweep=sweep,
            tolerance=args.tolerance,
            limit=args.limit,
            overrides=args.overrides,
            nproc_per_node=args.nproc_per_node,
        )
    except SweepFailed as exc:  # each failure's last lines are already on stderr
        print(f"ampflow bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(summary["markdown"])
    print(closing_lines(summary, Path(args.out)))
    failed = [r["id"] for r in summary["runs"] if r["status"] != "ok"]
    if failed:
        print(f"ampflow bench: {len(failed)} configuration(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _refuse_swept_overrides(overrides: list[str] | None) -> None:
    """``--set precision=...`` (or compile, strategy) would give every configuration the same value."""
    for pair in overrides or []:
        key = pair.split("=", 1)[0].strip()
        if key in _SWEPT_KEYS:
            raise ConfigError(f"--set {key}: the sweep sets {key} per configuration; use {_SWEPT_KEYS[key]}")


def check_nproc(
    sweep: SweepSpec,
    nproc_per_node: int,
    mesh: str | None = None,
    *,
    names: tuple[str, str] = ("--nproc-per-node", "--strategies"),
) -> None:
    """Refuse a process count the sweep's distributed strategies cannot run on (ConfigError, exit 2).

    Every strategy but ``single`` needs at least 2 processes, and each one's layout (its default mesh,
    or ``mesh`` from ``--set mesh=...``, which every configuration gets) must cover exactly
    ``nproc_per_node`` ranks (:func:`ampflow.engine.mesh.resolve`, torch-free). A single-strategy
    sweep ignores the count. ``names``: how the caller's user spelled the process count and the
    strategies (this CLI's flags by default; the Airflow DAG and the KFP pipeline pass their params'
    names), so that the message names what the user typed.
    """
    if not sweep.distributed:
        return
    from ampflow.engine import mesh as meshes

    nproc_name, strategies_name = names
    distributed = [s for s in sweep.strategies if s != "single"]
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 2:
        raise ConfigError(
            f"{nproc_name} must be at least 2 for strategies {', '.join(distributed)} "
            f"(got {nproc_per_node!r}); use {strategies_name} single for one process"
        )
    for strategy in sweep.strategies:
        meshes.resolve(strategy, mesh, nproc_per_node, nproc_per_node)


def _check_layouts(
    config: RunConfig, sweep: SweepSpec, data_dir: Path, nproc_per_node: int, overrides: list[str] | None
) -> None:
    """Every layout rule train applies before its process group (``ampflow.engine.mesh.check``: the
    recipe's tensor-parallel plan, its pipeline split, compile or ``batch_size=auto`` with a mesh
    strategy ...), for each distributed configuration, before the first one trains (ConfigError)."""
    if not sweep.distributed:
        return
    from ampflow.data.manifest import dataset_info, read_manifest
    from ampflow.engine import mesh as meshes
    from ampflow.recipes import get_recipe
    from ampflow.steps.train import recipe_defaults

    recipe = get_recipe(config.recipe)
    info = dataset_info(read_manifest(data_dir))
    # as train resolves it: the --set keys and the swept fields are the user's, the rest the recipe's
    explicit = set(parse_overrides(overrides)) | set(_SWEPT_KEYS)
    seen = set()
    for e in sweep.entries():
        if e.distributed and e.config_id not in seen:
            seen.add(e.config_id)
            entry_config = config.replace(strategy=e.strategy, precision=e.precision, compile=e.compile)
            resolved = entry_config.resolve(recipe_defaults(recipe), explicit)
            meshes.check(resolved, recipe, info, nproc_per_node, nproc_per_node)


def _kfp_local_runner() -> Any:
    """The kfp-local engine: the ``kfp-local`` entry point of the ``ampflow.engines`` group.

    The KFP skin (pipelines/, components/) is installed beside the ampflow package and registers
    itself there; an installation without it, or without kfp, is a usage error (exit 2).
    """
    import importlib.util
    from importlib.metadata import entry_points

    found = list(entry_points(group="ampflow.engines", name="kfp-local"))
    if not found:
        raise ConfigError(
            "--engine kfp-local is not installed: install ampflow from its repository checkout "
            "(pip install -e '.[kfp]'), which brings the pipelines and components packages"
        )
    if importlib.util.find_spec("kfp") is None:
        raise ConfigError("--engine kfp-local needs kfp: pip install 'ampflow[kfp]'")
    return found[0].load()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # a child that inherited MLFLOW_RUN_ID would log into the parent instead of its own child run
    env.pop("MLFLOW_RUN_ID", None)
    return env


_STEP_LINE = re.compile(rb"step (\d+)/(\d+)")


def _run_child(argv: list[str], log_path: Path, label: str | None = None) -> int:
    """Run one step in a child process, its output appended to ``log_path``; returns its exit code.

    With ``label``, the child's ``step N/M`` lines become progress here: a bar on a terminal, a plain
    line at each quarter of the run in a log (minutes of tweets-minilm training are not silence).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env())  # noqa: S603
        if label is None:
            return proc.wait()
        progress = _Progress(label)
        while proc.poll() is None:
            time.sleep(0.5)
            progress.update(_last_step(log_path, start))
        progress.update(_last_step(log_path, start))
        progress.close()
    return proc.returncode


def _last_step(log_path: Path, start: int) -> tuple[int, int] | None:
    """The last ``step N/M`` the child printed since ``start`` (a byte offset), or None."""
    with open(log_path, "rb") as fh:
        fh.seek(start)
        found = _STEP_LINE.findall(fh.read())
    return (int(found[-1][0]), int(found[-1][1])) if found else None


class _Progress:
    """A tqdm bar named after the configuration on a terminal; quarter-way lines otherwise."""

    def __init__(self, label: str):
        self.label, self.bar, self.said = label, None, 0
        self.tty = sys.stdout.isatty()

    def update(self, step: tuple[int, int] | None) -> None:
        if step is None:
            return
        done, total = step
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=self.label, unit="step", leave=False)
            self.bar.update(done - self.bar.n)
        elif total and done * 4 // total > self.said:
            self.said = done * 4 // total
            print(f"{self.label}: step {done}/{total}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(
    config: RunConfig,
    paths: Paths,
    *,
    sweep: SweepSpec,
    tolerance: float = 0.5,
    limit: int | None = None,
    overrides: list[str] | None = None,
    entries: list[SweepEntry] | None = None,
    nproc_per_node: int = DEFAULT_NPROC_PER_NODE,
) -> dict[str, Any]:
    """Run the sweep; returns the comparison summary (also written to ``out/summary.json``).

    ``overrides`` are ``key=value`` strings applied to every configuration's training; ``entries``
    runs a subset of ``sweep.entries()`` in its order (``ampflow doctor --gpu``: every precision
    uncompiled, and bf16-mixed compiled too); ``nproc_per_node``: the torchrun process count of the
    configurations whose strategy is not ``single``. Raises ConfigError for bad input (before anything
    trains), :class:`SweepFailed` when every configuration failed.
    """
    if paths.out is None:
        raise ConfigError("--out is required")
    if entries is None:
        entries = sweep.entries()
    elif not entries or any(e not in sweep.entries() for e in entries):
        raise ConfigError("entries must be a non-empty subset of the sweep's configurations")
    _refuse_unsupported(config, sweep.precisions)
    check_nproc(sweep, nproc_per_node, config.mesh)
    out = Path(paths.out)
    # one sweep per --out at a time: a second would mix its runs into this one's report and MLflow runs
    with locking.hold(out, "--out"):
        return _sweep(config, paths, out, sweep, entries, tolerance, limit, overrides, nproc_per_node)


def _sweep(
    config: RunConfig,
    paths: Paths,
    out: Path,
    sweep: SweepSpec,
    entries: list[SweepEntry],
    tolerance: float,
    limit: int | None,
    overrides: list[str] | None,
    nproc_per_node: int = DEFAULT_NPROC_PER_NODE,
) -> dict[str, Any]:
    """Prep once, then train and evaluate each entry under the sweep's parent run, then compare."""
    from ampflow import tracking
    from ampflow.steps import prep
    from ampflow.tracking.sweeps import TAG_SWEEP_SIZE, sweep_params

    data_dir = out / "data"
    _set_aside_previous_runs(out)
    print(f"[prep] {config.recipe} -> {data_dir}", flush=True)
    prep.run(config, Paths.of(out=data_dir, source=paths.source), limit=limit)
    _check_layouts(config, sweep, data_dir, nproc_per_node, overrides)

    parent = tracking.start_run("sweep", config=config, run_dir=out, tags={TAG_SWEEP_SIZE: str(len(entries))})
    status = "FAILED"
    try:
        # the params every sweep parent carries, a pipeline's recorded one too (ampflow.tracking.sweeps)
        parent.log_params(
            sweep_params(
                recipe=config.recipe,
                precisions=list(sweep.precisions),
                compile_modes=list(sweep.compile_words),
                strategies=list(sweep.strategies),
                repeats=sweep.repeats,
                baseline=sweep.baseline,
                tolerance=tolerance,
            )
        )
        settings = dict(o.split("=", 1) for o in overrides or [])
        records = []
        for i, entry in enumerate(entries, 1):
            tag = f"[{i}/{len(entries)}] {entry.id}"
            records.append(
                _run_entry(entry, tag, config.recipe, data_dir, out, parent.run_id, settings, nproc_per_node)
            )
        summary = _compare(records, out, sweep.baseline, tolerance, parent.run_id)
        status = "FINISHED" if all(r["status"] == "ok" for r in records) else "FAILED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.close(status)


def _set_aside_previous_runs(out: Path) -> None:
    """A second sweep into the same --out (make demo twice) must neither fail on the old
    checkpoints nor destroy them: the old runs move aside."""
    previous = out / "runs"
    if previous.is_dir() and any(previous.iterdir()):
        kept = out / f"runs-{time.strftime('%Y%m%dT%H%M%S')}"
        previous.rename(kept)
        print(f"[bench] the previous sweep's runs are kept in {kept}", flush=True)


def _run_entry(
    entry: SweepEntry,
    tag: str,
    recipe: str,
    data_dir: Path,
    out: Path,
    parent_run_id: str | None,
    settings: dict[str, str],
    nproc_per_node: int = DEFAULT_NPROC_PER_NODE,
) -> dict[str, Any]:
    """Train then evaluate one configuration in child processes; returns its record for the summary.

    A distributed entry trains under :func:`ampflow.commands.torchrun_program`; evaluation is one process either way.
    """
    program = (sys.executable, "-m", "ampflow")
    train_program = torchrun_program(nproc_per_node) if entry.distributed else program
    run_dir = out / "runs" / entry.id
    log_path = run_dir / "train.log"
    t0 = time.perf_counter()
    load_before = _load()
    print(f"{tag}: training", flush=True)
    train = plan_step(
        "train",
        {
            "recipe": recipe,
            "data": str(data_dir),
            "out": str(run_dir),
            "precision": entry.precision,
            "compile": entry.compile,
            "strategy": entry.strategy if entry.distributed else None,
            "parent_run_id": parent_run_id,
        },
        overrides=settings,
    )
    rc = _run_child(train.argv(train_program), log_path, label=f"{tag}: training")
    if rc == 0:
        print(f"{tag}: evaluating", flush=True)
        evaluate = plan_step(
            "evaluate",
            {
                "recipe": recipe,
                "data": str(data_dir),
                "checkpoint": str(run_dir),
                "out": str(run_dir / "eval"),
                "parent_run_id": parent_run_id,
            },
        )
        rc = _run_child(evaluate.argv(program), log_path)
    # the child itself adds ~1 to the load average (torchrun's workers ~1 each); more means a competing job
    nproc = nproc_per_node if entry.distributed else 1
    load_per_core = max(load_before, _load())
    if rc != 0:
        print(
            f"{tag}: FAILED (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "id": entry.id,
        "precision": entry.precision,
        "compile": entry.compile,
        "strategy": entry.strategy,
        "nproc": nproc,
        "load_per_core": round(load_per_core, 2),
        "busy": load_per_core > 1.0 + nproc / (os.cpu_count() or 1),
        "repeat": entry.repeat,
        "run_dir": str(run_dir),
        "status": "ok" if rc == 0 else "failed",
        "exit_code": rc,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _compare(
    records: list[dict[str, Any]], out: Path, baseline: str, tolerance: float, sweep_run_id: str | None
) -> dict[str, Any]:
    """Compare the configurations that trained, write the reports, publish them to the sweep run."""
    ok_dirs = [Path(r["run_dir"]) for r in records if r["status"] == "ok"]
    if not ok_dirs:
        raise SweepFailed(f"every configuration failed; see the train.log files under {out / 'runs'}")
    from ampflow.compare.markdown import render_markdown
    from ampflow.compare.summary import compare_runs, write_reports
    from ampflow.tracking.queries import publish_summary
    from ampflow.tracking.sweeps import log_comparison_views

    summary = compare_runs(ok_dirs, baseline=baseline, tolerance=tolerance)
    summary["runs"] = records
    summary["sweep_run_id"] = sweep_run_id
    summary["busy_machine"] = [r["id"] for r in records if r.get("busy")]
    files = write_reports(summary, out)
    if sweep_run_id:
        publish_summary(summary, files)
        log_comparison_views(summary)
    summary["markdown"] = render_markdown(summary) + _busy_note(records)
    return summary


def _load() -> float:
    """1-minute load average per core: above ~1 other work competes with the timed run."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def _busy_note(records: list[dict[str, Any]]) -> str:
    busy = [f"{r['id']} (load {r['load_per_core']:.1f}/core)" for r in records if r.get("busy")]
    if not busy:
        return ""
    return (
        "\n\n**Warning:** other work was competing for the CPU while these ran: "
        + ", ".join(busy)
        + ". Their speed figures measure contention as much as precision; re-run on an idle machine or use "
        "--repeats to see the spread."
    )


def _refuse_unsupported(config: RunConfig, precisions: tuple[str, ...]) -> None:
    """Fail before an hour of training when the hardware cannot run a requested mode."""
    if "fp8" in precisions:  # needs fp8 tensor cores and torchao: the same rule train applies
        from ampflow.engine.precision import check_supported

        check_supported("fp8", "cpu" if config.device == "cpu" else _device_kind(config.device))
    fp16 = [p for p in precisions if p in CUDA_ONLY_PRECISIONS]
    if not fp16 or config.device == "cuda":
        return
    import torch

    if config.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError(
            f"precision {fp16[0]} needs a CUDA device (fp16 autocast on CPU is refused, not emulated); "
            "drop it from --precisions or run on a GPU"
        )


def _device_kind(name: str) -> str:
    import torch

    return name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

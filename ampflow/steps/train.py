"""``ampflow train``: train one recipe under one precision mode; write checkpoints and ``result.json``.

    ampflow train --recipe tweets-bow --data data/tweets --out runs/bf16 --precision bf16-mixed --set max_steps=200
    ampflow train --recipe tweets-bow --data data/tweets --out runs/bf16 --resume      # continue after a kill
    torchrun --nproc_per_node=2 -m ampflow train --strategy ddp --recipe tweets-bow --data data/tweets --out runs/ddp

Writes into ``--out``: ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end) and
``result.json`` (schema ``ampflow.train.result/1``, see the README's engine section). A fresh run into a
directory that already holds a checkpoint is refused (exit 2); pass ``--resume`` to continue it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ampflow import locking
from ampflow.config import PRECISIONS, STRATEGIES, ConfigError, RunConfig, parse_overrides
from ampflow.steps import Paths, add_set_argument

HELP = "train a recipe under one precision mode; write checkpoints and result.json"
# `--help` lists every RunConfig key: this step passes them all on
TAKES_ALL_SET_KEYS = True
RESULT_FILE = "result.json"

# On --resume these come from this invocation; everything else from the checkpoint's resolved config
# (changing them does not change what the weights become, or extends the run on purpose).
RESUME_MAY_CHANGE = (
    "max_steps",
    "epochs",
    "checkpoint_every",
    "log_every",
    "device",
    "compile",
    "strategy",
    "warmup_steps",
    "max_nonfinite_steps",
    "eval_batch_size",
    # the layout: either checkpoint format loads under another mesh (resharding)
    "mesh",
    "pp_schedule",
    "sequence_parallel",
    "checkpoint_format",  # either format loads under any layout
    "comm_profile_steps",  # which steps measure comm_time_share: a reporting choice
    # in memory or streamed, the same micro-batches come out
    "data_loading",
    "data_workers",
    "peak_flops",  # MFU's denominator: a reporting choice
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``ampflow train`` options."""
    p.add_argument("--recipe", required=True, help="built-in recipe name or module:function")
    p.add_argument("--data", required=True, help="prepared dataset directory (from `ampflow prep`)")
    p.add_argument("--out", required=True, help="run directory: checkpoint.pt, result.json")
    p.add_argument("--precision", help=f"precision mode: {', '.join(PRECISIONS)} (default 32-true)")
    p.add_argument(
        "--strategy",
        help=f"{', '.join(STRATEGIES)} (every one but single runs under torchrun; default single)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (compile time reported apart)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoint.pt when there is one"
    )
    p.add_argument("--require-tracking", action="store_true", help="fail when MLflow tracking is unavailable")
    p.add_argument("--parent-run-id", help="MLflow parent run (a sweep) for this run")
    add_set_argument(p, "configuration override (repeatable), e.g. --set max_steps=100 --set batch_size=auto")


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The run's configuration, built (and validated) once, and the keys this command line set.

    ``--set`` pairs are parsed once and win over ``--precision`` / ``--strategy``. Raises ConfigError.
    """
    fields: dict[str, Any] = {"recipe": args.recipe, "compile": bool(args.compile)}
    if args.precision is not None:
        fields["precision"] = args.precision
    if args.strategy is not None:
        fields["strategy"] = args.strategy
    fields.update(parse_overrides(args.overrides))
    return RunConfig.from_dict(fields), set(fields) - {"recipe"}


def cli(args: argparse.Namespace) -> int:
    """Run ``ampflow train`` from parsed arguments; print the summary line on rank 0; exit code 0."""
    config, explicit = config_from_args(args)
    result = run(
        config,
        Paths.of(data=args.data, out=args.out),
        resume=args.resume,
        require_tracking=args.require_tracking,
        parent_run_id=args.parent_run_id,
        explicit=explicit,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 speaks
        # flushed: under torchrun a buffered tail was lost when the process group tore down
        print(summary_line(result), flush=True)
        print(closing_lines(result, Path(args.out)), flush=True)
    return 0


def closing_lines(result: dict[str, Any], out: Path) -> str:
    """The last lines: every file the run wrote, the logged model, and the MLflow run (its id, the
    store, and a UI link when the store is a server; nothing when tracking is off)."""
    lines = [f"result:     {out / RESULT_FILE}", f"checkpoint: {result['checkpoint']}"]
    if result.get("model_uri"):
        lines.append(f"model:      {result['model_uri']} (mlflow.pytorch.load_model loads it)")
    if result.get("mlflow"):
        lines.append(result["mlflow"])
    return "\n".join(lines)


def summary_line(result: dict[str, Any]) -> str:
    """One human line from a result dict: speed, step p50, peak memory, final loss, skipped steps, checkpoint."""
    m = result.get("metrics", {})

    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    peak = m.get("peak_memory_bytes")
    skipped = m.get("skipped_steps") or 0
    # a run that skipped steps trained on less than it claims: say so where a person looks first
    warn = f", {skipped} of them SKIPPED (non-finite loss or gradients)" if skipped else ""
    val = m.get("final_val_accuracy")
    if val is not None:  # with val_every: the last validation, and the target when one was set
        reached = m.get("steps_to_target")
        target = (result.get("config") or {}).get("target_accuracy")
        warn += f", val accuracy {val:.4f}" + (
            ""
            if target is None
            else f" (target {target}: {'reached at step ' + str(reached) if reached else 'not reached'})"
        )
    return (
        f"{result['recipe']} {result['precision']}{' compiled' if result.get('compile') else ''} on "
        f"{result['device_name']}: {f(m.get('samples_per_s'), '.1f')} samples/s{timed_window(result)}, step p50 "
        f"{f(m.get('step_time_p50_s'), '.4f')} s, peak memory {f(peak and peak / 2**20, '.0f')} MiB, "
        f"final loss {f(m.get('final_train_loss'), '.4f')}, {m.get('steps')} steps{warn} -> {result['checkpoint']}"
    )


def timed_window(result: dict[str, Any]) -> str:
    """`` (timed window, steps a..b, warm-up N excluded)``: which steps the summary's samples/s, step
    p50 and memory cover, unlike a progress line's rate of one step; "" when no step was timed.

    The window is the run's last ``timed_steps`` steps; the N steps before it (of this process's run:
    after ``resumed_from_step``) are warm-up, the compiling step under ``--compile`` and any
    communication-profiled steps, each named when there.
    """
    m = result.get("metrics", {})
    timed, last = m.get("timed_steps"), m.get("steps")
    if not timed or last is None:
        return ""
    first = last - timed + 1
    excluded = first - 1 - (result.get("resumed_from_step") or 0)
    warmup = (result.get("config") or {}).get("warmup_steps")
    compiled = 1 if result.get("compile") else 0
    parts = []
    if warmup is not None and excluded != warmup:
        parts.append(f"warmup_steps={warmup}")
        if compiled:
            parts.append("the compiling step")
        if excluded - warmup - compiled > 0:
            parts.append(f"{excluded - warmup - compiled} profiled")
    detail = f": {', '.join(parts)}" if parts else ""
    return f" (timed window, steps {first}..{last}, warm-up {excluded} excluded{detail})"


def _validate_paths(paths: Paths) -> tuple[Path, Path]:
    if paths.data is None:
        raise ConfigError("--data is required")
    if paths.out is None:
        raise ConfigError("--out is required")
    out = Path(paths.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    return Path(paths.data), out


def prepare(
    config: RunConfig, paths: Paths, *, resume: bool, explicit: set[str] | None = None
) -> tuple[RunConfig, Any, dict[str, Any] | None, Path, Path]:
    """Every check that can refuse the run, before anything is written: (config, recipe, state, data, out)."""
    from ampflow.data.manifest import check_dataset_recipe, dataset_hash, read_manifest
    from ampflow.engine import checkpoint
    from ampflow.recipes import get_recipe

    data_dir, out = _validate_paths(paths)
    recipe = get_recipe(config.recipe)
    manifest = read_manifest(data_dir)
    check_dataset_recipe(manifest, config, recipe, data_dir)
    config = config.resolve(recipe_defaults(recipe), explicit or set())
    ckpt = checkpoint.checkpoint_path(out)
    state = None
    if ckpt.exists() and not resume:
        raise ConfigError(
            f"--out {out} already holds a checkpoint; pass --resume to continue it or choose another --out"
        )
    if resume and ckpt.exists():
        state = checkpoint.load(ckpt, what="--resume")
        checkpoint.check_trained_on(
            state,
            recipe=config.recipe,
            data_hash=dataset_hash(manifest),
            path=ckpt,
            data=data_dir,
            what="--resume",
        )
        saved = state["config"]
        refuse_resume_changes(config, saved, explicit or set(), ckpt)
        keep = {k: getattr(config, k) for k in RESUME_MAY_CHANGE if k in (explicit or set())}
        if keep.get("strategy", saved.get("strategy")) != saved.get("strategy") and "mesh" not in keep:
            # a mesh names the old strategy's dimensions (pp:2,dp:2): another strategy resumes on its
            # own default layout unless this command line gives one
            keep["mesh"] = None
        # the checkpoint's configuration comes off disk: validated here, once, with this run's changes
        config = RunConfig.from_dict({**saved, **keep})
    return config, recipe, state, data_dir, out


def refuse_resume_changes(config: RunConfig, saved: dict[str, Any], explicit: set[str], ckpt: Path) -> None:
    """A setting given on ``--resume`` that the checkpoint cannot take is bad input, never dropped.

    ``explicit``: the keys this command line set; ``saved``: the checkpoint's resolved configuration.
    Keys in :data:`RESUME_MAY_CHANGE` may differ; any other that differs raises ConfigError naming it
    (the launcher and Airflow retries add ``--resume`` themselves: silence would reuse old settings).
    """
    for key in sorted(explicit - set(RESUME_MAY_CHANGE)):
        given, kept = getattr(config, key), saved.get(key)
        # `auto` was resolved to a number by the search and saved as that number: a retry that passes
        # the same `--set batch_size=auto` asks for the same thing
        if key == "batch_size" and given == "auto":
            continue
        if given != kept:
            raise ConfigError(
                f"--resume: {key}={given} differs from the checkpoint's {key}={kept} ({ckpt}); only "
                f"{', '.join(RESUME_MAY_CHANGE)} may change on resume (start a new --out to change {key})"
            )


def recipe_defaults(recipe: Any) -> dict[str, Any]:
    """A recipe's configuration defaults: its ``defaults`` dict, plus the documented ``schedule`` and
    ``lr_warmup_steps`` attributes as ``lr_schedule`` / ``lr_warmup_steps`` (the dict wins)."""
    attrs = {
        "lr_schedule": getattr(recipe, "schedule", None),
        "lr_warmup_steps": getattr(recipe, "lr_warmup_steps", None),
    }
    return {
        **{k: v for k, v in attrs.items() if v is not None},
        **dict(getattr(recipe, "defaults", {}) or {}),
    }


def run(
    config: RunConfig,
    paths: Paths,
    *,
    resume: bool = False,
    require_tracking: bool = False,
    parent_run_id: str | None = None,
    explicit: set[str] | None = None,
) -> dict[str, Any]:
    """Train and return the result dict (also written to ``--out/result.json`` by rank 0).

    Raises ConfigError (exit 2) on bad input, before anything is written, and when another process
    holds ``--out``.
    """
    from ampflow.engine.precision import check_supported

    config, recipe, state, data_dir, out = prepare(config, paths, resume=resume, explicit=explicit)
    if state is not None and state.get("finished") and (out / RESULT_FILE).is_file():
        # an orchestrator's retry of a run that already finished: report it, train nothing
        prev = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
        # a run that stopped at its target (stop_at_target) is finished whatever max_steps says
        if prev.get("metrics", {}).get("steps") == state.get("step") and (
            config.max_steps is None
            or config.max_steps <= state.get("step", 0)
            or prev.get("stopped_at_target")
        ):
            print(
                f"ampflow train: {out} already finished at step {state['step']}; nothing to do",
                file=sys.stderr,
            )
            return prev

    device_kind = _device_kind(config.device)
    # refused before any process group starts; make_policy below does not check again
    check_supported(config.precision, device_kind)
    _check_layout(config, recipe, data_dir)
    with contextlib.ExitStack() as hold:
        if int(os.environ.get("RANK", "0")) == 0:  # one writer per run directory: rank 0 holds it
            hold.enter_context(locking.hold(out, "--out"))
        return _train(config, recipe, state, data_dir, out, device_kind, require_tracking, parent_run_id)


def _train(
    config: RunConfig,
    recipe: Any,
    state: dict[str, Any] | None,
    data_dir: Path,
    out: Path,
    device_kind: str,
    require_tracking: bool,
    parent_run_id: str | None,
) -> dict[str, Any]:
    """The training proper, on every rank, once the run is validated and its directory held."""
    from ampflow import tracking
    from ampflow.engine import parallel
    from ampflow.engine.devices import resolve_device
    from ampflow.engine.precision import make_policy
    from ampflow.engine.trainer import Trainer
    from ampflow.io import atomic_write_json

    dist_info = parallel.init(config.strategy, device_kind, config.mesh)
    try:
        device = resolve_device(config.device, dist_info.local_rank)
        policy = make_policy(config.precision, device.type, check=False)
        tracker = tracking.start_run(
            "train",
            config=config,
            run_dir=out,
            parent_run_id=parent_run_id,
            require=require_tracking,
            rank=dist_info.rank,
            resume=state is not None,
        )
        with tracking.tracked(tracker):
            if dist_info.is_main and state is not None:
                run = f" (MLflow run {tracker.run_id})" if tracker.run_id else ""
                print(f"ampflow train: resuming {out} from step {state['step']}{run}", flush=True)
            if dist_info.is_main:
                out.mkdir(parents=True, exist_ok=True)
                tracker.log_dataset(data_dir)
            parallel.barrier()
            trained = Trainer(
                config,
                recipe,
                data_dir,
                out,
                policy=policy,
                device=device,
                dist_info=dist_info,
                tracker=tracker,
                resume_state=state,
            ).fit()
            result = trained["result"]
            if dist_info.is_main:
                atomic_write_json(out / RESULT_FILE, result)
                tracker.log_train_result(result, out)
                tracker.log_model(trained["model"], input_example=trained["example"])
                # for the last lines a person reads (not in result.json, written above)
                result = {
                    **result,
                    "mlflow": tracker.where(),
                    "model_uri": getattr(tracker, "model_uri", None),
                }
        return result
    finally:
        parallel.shutdown(dist_info)


def _check_layout(config: RunConfig, recipe: Any, data_dir: Path) -> None:
    """Refuse a mesh, plan or stage split that cannot work, before any process group (ConfigError)."""
    from ampflow.data.manifest import dataset_info, read_manifest
    from ampflow.engine import mesh

    if config.strategy == "single":
        return
    from ampflow.engine.parallel import require_launcher

    # no launcher is the cause a user must hear first: outside torchrun the world size is 1 and every
    # mesh would "not divide" it; and it is refused before --out exists (a refusal writes nothing)
    require_launcher(config.strategy)
    local = os.environ.get("LOCAL_WORLD_SIZE")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    mesh.check(config, recipe, dataset_info(read_manifest(data_dir)), world, int(local) if local else None)


def _device_kind(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

"""``ampflow evaluate``: accuracy, macro-F1, loss, ECE and the confusion matrix of a trained run.

    ampflow evaluate --recipe tweets-bow --data data/tweets --checkpoint runs/bf16 --out runs/bf16/eval
    ampflow evaluate --recipe tweets-bow --data data/tweets --checkpoint runs/bf16 --out runs/bf16/eval --set device=cpu

Loads ``--checkpoint`` (a run directory or its ``checkpoint.pt``) with its resolved configuration,
runs the dataset's test split under the same precision's autocast in batches of ``eval_batch_size``
and writes ``--out/eval.json`` (schema ``ampflow.eval.result/1``) and ``--out/predictions.jsonl``, the
per-example results in split order, one JSON object a line: ``{"index": int, "label": int,
"prediction": int, "confidence": float}`` (confidence: the predicted class's probability). ``ampflow
compare`` pairs two runs' files for McNemar's test; both files are written atomically. ``--set`` may change
``eval_batch_size`` and ``device`` (a run trained on CUDA can be evaluated on a CPU, precision permitting).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ampflow.config import EVAL_MAY_CHANGE, ConfigError, RunConfig, parse_overrides
from ampflow.steps import Paths, add_set_argument

HELP = "evaluate a trained run on the held-out split; write eval.json"
EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.jsonl"  # read by ampflow.compare.records.load_predictions


def write_predictions(path: str | Path, examples: dict[str, Any]) -> None:
    """``examples`` (``label``, ``prediction``, ``confidence``: equal-length sequences in split order)
    as JSON lines (module docstring), written atomically; confidences rounded to 6 decimals."""
    from ampflow.io import atomic_open

    labels, preds, conf = examples["label"], examples["prediction"], examples["confidence"]
    with atomic_open(path, "w") as fh:
        for i in range(len(labels)):
            fh.write(
                f'{{"index": {i}, "label": {int(labels[i])}, "prediction": {int(preds[i])}, '
                f'"confidence": {round(float(conf[i]), 6)}}}\n'
            )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``ampflow evaluate`` options."""
    p.add_argument("--recipe", required=True, help="built-in recipe name or module:function (as trained)")
    p.add_argument("--data", required=True, help="prepared dataset directory (the one the run trained on)")
    p.add_argument(
        "--checkpoint", required=True, help="run directory from `ampflow train` (or its checkpoint.pt)"
    )
    p.add_argument("--out", required=True, help="output directory for eval.json")
    p.add_argument("--parent-run-id", help="MLflow parent run (a sweep)")
    p.add_argument("--require-tracking", action="store_true", help="fail when MLflow tracking is unavailable")
    add_set_argument(p, f"override ({', '.join(EVAL_MAY_CHANGE)}), e.g. --set eval_batch_size=512")


def cli(args: argparse.Namespace) -> int:
    """Run ``ampflow evaluate`` from parsed arguments and print one summary line; exit code 0."""
    result = run(
        RunConfig(recipe=args.recipe),
        Paths.of(data=args.data, checkpoint=args.checkpoint, out=args.out),
        overrides=args.overrides,
        parent_run_id=args.parent_run_id,
        require_tracking=getattr(args, "require_tracking", False),
    )
    print(
        f"{result['recipe']} {result['precision']}: accuracy {result['accuracy']:.4f}, macro-F1 "
        f"{result['macro_f1']:.4f}, loss {result['loss']:.4f}, ECE {result['ece']:.4f} on {result['n']} "
        f"{result['split']} examples -> {Path(args.out) / EVAL_FILE}"
    )
    # the last lines: every file written, then the MLflow run (nothing when tracking is off)
    print(f"eval:        {Path(args.out) / EVAL_FILE}")
    print(f"predictions: {Path(args.out) / PREDICTIONS_FILE}")
    if result.get("mlflow"):
        print(result["mlflow"])
    return 0


def run(
    config: RunConfig,
    paths: Paths,
    *,
    overrides: list[str] | None = None,
    parent_run_id: str | None = None,
    require_tracking: bool = False,
) -> dict[str, Any]:
    """Evaluate ``paths.checkpoint`` on ``paths.data``'s test split; write and return eval.json's dict.

    Only ``eval_batch_size`` and ``device`` may be overridden. Raises ConfigError (exit 2) on a
    checkpoint of another recipe or dataset."""
    from ampflow import tracking
    from ampflow.data.manifest import check_dataset_recipe, dataset_hash, read_manifest
    from ampflow.engine import checkpoint
    from ampflow.engine.devices import resolve_device
    from ampflow.engine.evaluation import evaluate_examples
    from ampflow.engine.precision import make_policy
    from ampflow.io import atomic_write_json
    from ampflow.recipes import get_recipe

    if paths.data is None or paths.checkpoint is None or paths.out is None:
        raise ConfigError("--data, --checkpoint and --out are required")
    changes = parse_overrides(overrides)
    unknown = sorted(set(changes) - set(EVAL_MAY_CHANGE))
    if unknown:
        raise ConfigError(
            f"evaluate --set {unknown[0]}: evaluate takes the trained run's configuration; "
            f"only {', '.join(EVAL_MAY_CHANGE)} may change"
        )
    out = Path(paths.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    recipe = get_recipe(config.recipe)
    manifest = read_manifest(paths.data)
    state = checkpoint.load(paths.checkpoint, what="--checkpoint")
    checkpoint.check_trained_on(
        state,
        recipe=config.recipe,
        data_hash=dataset_hash(manifest),
        path=paths.checkpoint,
        data=paths.data,
        what="--checkpoint",
    )
    trained = RunConfig.from_dict(state["config"])
    check_dataset_recipe(manifest, trained, recipe, paths.data)
    eval_config = trained.replace(**changes) if changes else trained
    device = resolve_device(eval_config.device)
    policy = make_policy(eval_config.precision, device.type)

    # evaluate continues the train run of its checkpoint: one configuration, one row in MLflow
    run_dir = Path(paths.checkpoint) if Path(paths.checkpoint).is_dir() else Path(paths.checkpoint).parent
    tracker = tracking.start_run(
        "evaluate",
        config=eval_config,
        run_dir=out,
        parent_run_id=parent_run_id,
        require=require_tracking,
        attach_to=run_dir,
    )
    with tracking.tracked(tracker):
        result, examples = evaluate_examples(
            eval_config, recipe, Path(paths.data), state, policy=policy, device=device
        )
        result["checkpoint"] = str(
            checkpoint.checkpoint_path(paths.checkpoint)
            if Path(paths.checkpoint).is_dir()
            else paths.checkpoint
        )
        # predictions first: an eval.json beside them means both are complete
        write_predictions(out / PREDICTIONS_FILE, examples)
        result["predictions_file"] = PREDICTIONS_FILE
        atomic_write_json(out / EVAL_FILE, result)
        tracker.log_eval_result(result, out)
        # for the last lines a person reads (not in eval.json, written above)
        result = {**result, "mlflow": tracker.where()}
    return result

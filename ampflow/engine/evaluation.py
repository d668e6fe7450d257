"""Evaluation of a trained checkpoint on the held-out test split, under the run's precision.

Besides the figures (eval.json) it keeps the per-example results: each test example's label, the
predicted class and the predicted class's probability, in split order. ``ampflow compare`` pairs two
configurations' results on the same examples for McNemar's test (:mod:`ampflow.compare.stats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ampflow.config import RunConfig
from ampflow.data.manifest import dataset_hash, dataset_info, label_names, read_manifest
from ampflow.data.splits import load_tensors
from ampflow.engine import checkpoint
from ampflow.engine.metrics import confusion_matrix, expected_calibration_error, macro_f1
from ampflow.engine.precision import PrecisionPolicy
from ampflow.engine.step import loss_fn_of

EVAL_SCHEMA = "ampflow.eval.result/1"
ECE_BINS = 15


@torch.no_grad()
def evaluate_examples(
    config: RunConfig,
    recipe: Any,
    data_dir: Path,
    state: dict[str, Any],
    *,
    policy: PrecisionPolicy,
    device: Any,
    split: str = "test",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Accuracy, macro-F1, mean loss, ECE and the confusion matrix of ``state``'s model on ``split``,
    and the per-example results they were computed from.

    Batches of ``config.eval_batch_size`` under the policy's autocast. Returns ``(eval.json dict
    (schema ``ampflow.eval.result/1``), {"label": int64 [n], "prediction": int64 [n], "confidence":
    float64 [n] (probability of the predicted class)})``, both in split order. Raises ConfigError when
    the dataset is bad."""
    manifest = read_manifest(data_dir)
    policy.setup()
    inputs, labels = load_tensors(data_dir, split, device, policy)
    model = recipe.build_model(dataset_info(manifest)).to(device)
    model = policy.convert_model(model)
    checkpoint.load_model_weights(model, state)
    model.eval()
    loss_fn = loss_fn_of(recipe)
    n = int(labels.shape[0])
    probs_all, loss_sum = [], 0.0
    for lo in range(0, n, config.eval_batch_size):
        sel = slice(lo, min(n, lo + config.eval_batch_size))
        batch = {k: v[sel] for k, v in inputs.items()}
        with policy.autocast():
            logits = model(**batch)
            loss = loss_fn(logits, labels[sel])
        loss_sum += float(loss.float().item()) * (sel.stop - sel.start)
        probs_all.append(torch.softmax(logits.float(), dim=-1).cpu())
    probs = torch.cat(probs_all).numpy().astype(np.float64)
    y = labels.cpu().numpy()
    num_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    cm = confusion_matrix(y, pred, num_classes)
    examples = {"label": y.astype(np.int64), "prediction": pred.astype(np.int64), "confidence": conf}
    return {
        "schema": EVAL_SCHEMA,
        "recipe": config.recipe,
        "split": split,
        "precision": config.precision,
        "device": device.type,
        "dataset_hash": dataset_hash(manifest),
        "checkpoint_step": int(state.get("step", 0)),
        "n": n,
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(cm),
        "loss": loss_sum / n,
        "ece": expected_calibration_error(conf, pred == y, bins=ECE_BINS),
        "ece_bins": ECE_BINS,
        "confusion_matrix": cm.tolist(),
        "labels": label_names(manifest, num_classes),
    }, examples

"""Scoring a loaded model on a prepared split: per-example correctness under a precision mode.

``ampflow register`` loads the champion and the candidate from MLflow (``mlflow.pytorch.load_model``)
and scores both here on the same test split, each under the precision it was trained in, so that the
two accuracies and McNemar's paired test (:mod:`ampflow.compare.stats`) come from the same examples.
A checkpoint is evaluated by :mod:`ampflow.engine.evaluation`; this module takes a model object.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ampflow.config import ConfigError
from ampflow.data.splits import load_tensors
from ampflow.engine.precision import make_policy


@dataclass(frozen=True)
class Scores:
    """One model on one split: ``correct`` per example in split order, ``accuracy`` (fraction in
    [0, 1]) = mean of ``correct``, ``n`` examples, the ``precision`` mode it ran under."""

    correct: list[bool]
    accuracy: float
    n: int
    precision: str


@torch.no_grad()
def score_model(
    model: Any,
    data_dir: str | Path,
    *,
    precision: str,
    device: Any,
    input_names: list[str] | None = None,
    batch_size: int = 1024,
    split: str = "test",
) -> Scores:
    """Predict ``split`` of ``data_dir`` with ``model`` under ``precision``'s policy (autocast, weight
    and input dtype) on ``device`` (a ``torch.device``), ``batch_size`` examples at a time.

    The inputs are the split's arrays but ``labels``: passed by keyword when the model's ``forward``
    takes those names (a pickled recipe model), else positionally in ``input_names`` order (a pt2
    export; ``input_names`` is the run's ``ampflow.model_inputs`` tag, default the manifest's order).
    The output is the logits tensor (or an object with ``.logits``), shape ``(batch, classes)``.

    Raises ConfigError for a precision this device cannot run or a split without labels; whatever
    the model raises on these inputs (wrong shapes, classes) propagates.
    """
    policy = make_policy(precision, device.type)
    policy.setup()
    inputs, labels = load_tensors(data_dir, split, device, policy)
    names = list(input_names or inputs)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ConfigError(
            f"--data {data_dir}: the model takes {', '.join(missing)}, the split has no such array"
        )
    try:
        model = policy.convert_model(model)
        model.eval()
    except (NotImplementedError, RuntimeError):
        pass  # an exported (pt2) graph is fixed in eval mode and dtype already; nothing to switch
    by_keyword = _takes_keywords(model, names)
    n = int(labels.shape[0])
    hits: list[Any] = []
    for lo in range(0, n, batch_size):
        sel = slice(lo, min(n, lo + batch_size))
        with policy.autocast():
            if by_keyword:
                out = model(**{k: inputs[k][sel] for k in names})
            else:
                out = model(*(inputs[k][sel] for k in names))
        logits = out if isinstance(out, torch.Tensor) else out.logits
        if logits.ndim != 2 or logits.shape[0] != sel.stop - sel.start:
            raise ValueError(f"model output of shape {tuple(logits.shape)}, expected (batch, classes)")
        hits.append((logits.float().argmax(dim=1) == labels[sel]).cpu())
    correct = torch.cat(hits).tolist()
    return Scores(correct=correct, accuracy=sum(correct) / n, n=n, precision=precision)


def _takes_keywords(model: Any, names: list[str]) -> bool:
    """Whether ``model(**{name: tensor})`` binds: the recipe's own module does, a pt2 export's
    positional wrapper (parameters x0, x1, ...) does not."""
    try:
        inspect.signature(model.forward).bind(**dict.fromkeys(names))
        return True
    except (TypeError, ValueError, AttributeError):
        return False

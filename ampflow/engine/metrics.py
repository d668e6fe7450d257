"""Measurement helpers: step-time statistics, FLOPs per sample, recompile counts, classification metrics."""

from __future__ import annotations

import copy
import math
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``; None when empty."""
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def step_time_stats(times: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/min/max of step times in seconds, as result.json ``metrics`` keys (None when empty)."""
    return {
        "step_time_p50_s": percentile(times, 50),
        "step_time_p90_s": percentile(times, 90),
        "step_time_p99_s": percentile(times, 99),
        "step_time_min_s": min(times) if times else None,
        "step_time_max_s": max(times) if times else None,
    }


def flops_per_sample(
    model: Any, inputs: dict[str, Any], labels: Any, loss_fn: Any, autocast: Any
) -> float | None:
    """FLOPs of one forward + backward per sample, counted by torch.utils.flop_counter on a copy.

    A copy, under a forked RNG, so that counting changes neither the weights, nor BatchNorm running
    statistics, nor the random stream the real run (and its resume) depends on.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    n = int(labels.shape[0])
    if n == 0:
        return None
    devices = [inputs_device(inputs)] if inputs_device(inputs).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            probe = copy.deepcopy(model)
            counter = FlopCounterMode(display=False)
            with counter:
                with autocast():
                    loss = loss_fn(probe(**inputs), labels)
                loss.backward()
            total = counter.get_total_flops()
        del probe
    except Exception:  # a model the counter cannot trace: report no figure rather than fail the run
        return None
    return float(total) / n if total else None


def inputs_device(inputs: dict[str, Any]) -> Any:
    """The device the first input tensor lives on."""
    return next(iter(inputs.values())).device


def dynamo_graph_count() -> int:
    """Graphs dynamo has compiled in this process; the growth after the first compile = recompiles."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return 0


# -- classification metrics (evaluate) -----------------------------------------------------------


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> Any:
    """``(num_classes, num_classes)`` int64 counts; rows are true labels, columns predictions."""
    import numpy as np

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def macro_f1(cm: Any) -> float:
    """Mean over classes of F1 (classes absent from both truth and predictions count as 0, as sklearn)."""
    import numpy as np

    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def expected_calibration_error(confidence: Any, correct: Any, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / n."""
    import numpy as np

    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return math.nan
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds (edges[b], edges[b+1]]; confidence 0 (impossible after softmax) joins the first bin
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += abs(correct[mask].mean() - confidence[mask].mean()) * mask.sum() / n
    return float(ece)

"""Model export to MLflow: the model a run logs must load back with ``mlflow.pytorch.load_model``.

Owns the pt2 (torch.export) preparation of a model (:func:`positional` for keyword-input models),
the pinned pip requirements, the tensor signature, and the three ways a model reaches MLflow:
:func:`log_pt2` (the normal way), :func:`log_pickled` (when torch.export cannot trace the model) and
:func:`save_offline` (a local MLflow model, sent later as an artifact, while the server is away).
The tracker decides which one applies. Import-light: torch and mlflow load inside the calls.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ampflow.tracking.writer import short_error


def positional(model: Any, example: Any) -> tuple[Any, Any, list[str]]:
    """Wrap a keyword-input model so torch.export sees a fixed list of positional tensors.

    Returns ``(model, example, input_names)``: unchanged with no names when ``example`` is not a
    dict; else a wrapper taking the tensors in the dict's order, the example as a tuple, and the
    keys. More than four inputs: the model unchanged, no example (only a pickle can hold it).

    torch.export binds a ``*args`` forward as one tuple parameter, which MLflow's per-input dynamic
    shapes do not describe; hence one explicit parameter per input (up to four).
    """
    if not isinstance(example, dict):
        return model, example, []
    import torch

    names = list(example)
    if len(names) > 4:
        return model, None, names  # offline path pickles the module; online pt2 would fail loudly

    class KeywordToPositional(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def call(self, *tensors: torch.Tensor) -> torch.Tensor:
            out = self.inner(**dict(zip(names, tensors, strict=True)))
            return out if isinstance(out, torch.Tensor) else out.logits

    class One(KeywordToPositional):
        def forward(self, x0: torch.Tensor) -> torch.Tensor:
            return self.call(x0)

    class Two(KeywordToPositional):
        def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
            return self.call(x0, x1)

    class Three(KeywordToPositional):
        def forward(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return self.call(x0, x1, x2)

    class Four(KeywordToPositional):
        def forward(
            self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
        ) -> torch.Tensor:
            return self.call(x0, x1, x2, x3)

    wrapper = (One, Two, Three, Four)[len(names) - 1]
    return wrapper(model), tuple(example[n] for n in names), names


def requirements() -> list[str]:
    """``dist==version`` for torch, mlflow, numpy and ampflow, those installed.

    Pinned explicitly: otherwise MLflow infers them by loading the model in a subprocess (about
    10 s per model).
    """
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("torch", "mlflow", "numpy", "ampflow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs


def signature(model: Any, example: Any, names: list[str]) -> Any:
    """A TensorSpec ``ModelSignature`` (what pt2 needs), the batch dimension left free.

    Runs ``model`` once on ``example`` to see the output; None when there is no example or the
    output is neither a tensor nor has ``.logits``.
    """
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if example is None:
        return None
    tensors = (example,) if isinstance(example, torch.Tensor | np.ndarray) else tuple(example)
    tensors = tuple(torch.as_tensor(t) for t in tensors)
    with torch.no_grad():
        out = model(*tensors)
    if not isinstance(out, torch.Tensor):
        out = getattr(out, "logits", None)
        if out is None:
            return None

    def spec(t: torch.Tensor, name: str | None) -> TensorSpec:
        t = t.detach().cpu()
        # numpy has no bfloat16: half-precision outputs are described as float32
        dtype = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().dtype
        return TensorSpec(dtype, (-1, *t.shape[1:]), name)

    labels: list[Any] = list(names) or (
        [None] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    )
    inputs = Schema([spec(t, n) for t, n in zip(tensors, labels, strict=True)])
    return ModelSignature(inputs=inputs, outputs=Schema([spec(out, None)]))


def log_pt2(
    model: Any,
    example: Any,
    names: list[str],
    *,
    name: str,
    run_id: str,
    uri: str,
    experiment_id: str | None,
) -> Any:
    """Log ``model`` (already :func:`positional`) in pt2 format into ``run_id``; returns MLflow's
    ``ModelInfo``. Raises what torch.export or MLflow raise (the caller tells the two apart)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    if experiment_id:
        mlflow.set_experiment(experiment_id=experiment_id)
    return mlflow.pytorch.log_model(
        model,
        name=name,
        input_example=example,
        signature=signature(model, example, names),
        run_id=run_id,
        pip_requirements=requirements(),
    )


def log_pickled(model: Any, *, name: str, run_id: str, exc: BaseException) -> Any:
    """Log the original ``model`` in MLflow's pickle format after pt2 export failed with ``exc``,
    and say so on stderr; returns MLflow's ``ModelInfo``.

    torch.export cannot trace every model (data-dependent control flow, odd outputs): keep the model
    rather than fail a finished training run.
    """
    import mlflow

    print(
        f"ampflow tracking: pt2 export of the model failed ({type(exc).__name__}: {short_error(exc)}); "
        "logging it in pickle format instead",
        file=sys.stderr,
        flush=True,
    )
    return mlflow.pytorch.log_model(
        model,
        name=name,
        serialization_format="pickle",
        run_id=run_id,
        pip_requirements=requirements(),
    )


def save_offline(model: Any, example: Any, names: list[str], dest: Path) -> None:
    """Save ``model`` (already :func:`positional`) as a local MLflow model in ``dest``; the tracker
    spools a ``model`` operation whose replay makes it the run's logged model (see ``Sender``).

    pt2 when ``example`` allows, as :func:`log_pt2` would log it online, so that a model saved while
    the server was away loads the same way (and pickle deserialization, which MLflow refuses by
    default, is not needed to score it); pickle of the original module otherwise."""
    import shutil

    import mlflow

    if example is not None:
        try:
            mlflow.pytorch.save_model(
                model,
                str(dest),
                input_example=example,
                signature=signature(model, example, names),
                serialization_format="pt2",
                pip_requirements=requirements(),
            )
            return
        except Exception as exc:
            shutil.rmtree(dest, ignore_errors=True)
            print(
                f"ampflow tracking: pt2 export of the model failed ({type(exc).__name__}: "
                f"{short_error(exc)}); saving it in pickle format instead",
                file=sys.stderr,
                flush=True,
            )
    # the original module (its class is importable), not the local wrapper class a pickle cannot hold
    inner = getattr(model, "inner", model)
    mlflow.pytorch.save_model(
        inner, str(dest), serialization_format="pickle", pip_requirements=requirements()
    )

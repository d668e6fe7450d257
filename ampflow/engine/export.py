"""What a trained run hands to model logging: a plain (unwrapped, unsharded) model and an example input.

The tracker logs these as the MLflow model; see ``Tracker.log_model``.
"""

from __future__ import annotations

from typing import Any

from ampflow.engine import parallel


def example_input(inputs: dict[str, Any]) -> dict[str, Any]:
    """The first two samples of ``inputs`` as numpy arrays (floats as float32), for a model signature."""
    return {
        k: v[:2].detach().cpu().float().numpy() if v.is_floating_point() else v[:2].cpu().numpy()
        for k, v in inputs.items()
    }


def exportable_model(
    model: Any,
    *,
    strategy: str,
    is_main: bool,
    rebuild: Any,
    full_state: dict[str, Any] | None,
    load_saved: Any = None,
) -> Any:
    """The trained model as a plain module, or None on ranks other than 0 under FSDP, tp, pp, fsdp+tp.

    FSDP2, tensor and pipeline parallelism split the parameters, so rank 0 builds a fresh copy with ``rebuild()`` (the
    recipe's model, converted to the precision) and loads ``full_state`` (the gathered weights), or,
    when that is None (a sharded checkpoint gathers nothing), calls ``load_saved(plain)``, which reads
    the checkpoint's shards into it. Other strategies return the module without its DDP wrapper.
    """
    if strategy in ("single", "ddp"):
        return parallel.unwrap(model)
    if not is_main:
        return None
    plain = rebuild()
    if full_state is None:
        load_saved(plain)
    else:
        plain.load_state_dict(full_state)
    return plain

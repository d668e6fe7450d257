"""Tensor parallelism (``--strategy tp``) and FSDP2 x tensor parallelism (``--strategy fsdp+tp``).

A recipe declares its plan with ``tp_plan(model, tp) -> {module pattern: "colwise" | "rowwise"}``
(``*`` matches one dotted segment of a module name). ``colwise`` splits a Linear's output features
(``torch.distributed.tensor.parallel.ColwiseParallel``: weight ``(out/tp, in)`` per rank, the output
stays local: a rank computes its own heads / hidden units); ``rowwise`` splits its input features
(``RowwiseParallel``: weight ``(out, in/tp)``, the partial outputs are all-reduced). A column split
followed by a row split needs one all-reduce per pair (Megatron-LM, Shoeybi et al. 2019, sec. 3).
Modules outside the plan stay replicated (plain tensors, identical on every rank of the group, their
gradients too: the column split's backward all-reduces the input gradient).

Sequence parallelism (``sequence_parallel=true``, Korthikanti et al. 2022): the recipe's plan in its
sequence-parallel form (``tp_plan(model, tp, sequence_parallel=True)``), whose styles may be any torch
``ParallelStyle``: norms as ``SequenceParallel`` (replicated weights applied to this rank's slice of
the sequence; their partial-sum gradients are all-reduced by :func:`grad_norm` before clipping), row
splits that reduce-scatter over the sequence, ``PrepareModuleInput`` all-gathers where a projection
needs the whole sequence. :mod:`ampflow.recipes.transformer` has the BERT form.

fsdp+tp shards with FSDP2 ``fully_shard`` over the mesh's ``dp`` dimension after the tensor split over
``tp`` (torchtitan's order), so each weight is a 2-D DTensor; under a mixed precision mode FSDP2's
``MixedPrecisionPolicy`` computes in the half type and reduces gradients in fp32. Under ``tp`` alone
the precision policy's autocast casts the local shards (DTensor ops run on them), fp32 weights kept.

    torchrun --nproc_per_node=2 -m ampflow train --strategy tp --recipe tweets-minilm --data D --out RUN
    torchrun --nproc_per_node=4 -m ampflow train --strategy fsdp+tp --set mesh=dp:2,tp:2 ...
"""

from __future__ import annotations

import fnmatch
from typing import Any

from ampflow.config import ConfigError


def expand_plan(model: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """``plan``'s patterns as the module names of ``model`` they match: ``{name: style}``.

    A style is ``"colwise"`` / ``"rowwise"`` (a Linear layer only) or a
    ``torch.distributed.tensor.parallel.ParallelStyle`` (any module). Raises ConfigError for any other
    style, a pattern that matches no module, or a colwise/rowwise match that is not a Linear layer.
    """
    import torch
    from torch.distributed.tensor.parallel import ParallelStyle

    modules = dict(model.named_modules())
    out: dict[str, Any] = {}
    for pattern, style in plan.items():
        torch_style = isinstance(style, ParallelStyle)
        if not torch_style and style not in ("colwise", "rowwise"):
            raise ConfigError(
                f"tp plan {pattern!r}: style must be colwise, rowwise or a torch ParallelStyle, got {style!r}"
            )
        parts = pattern.split(".")
        hits = [
            name
            for name in modules
            if len(name.split(".")) == len(parts)
            and all(fnmatch.fnmatchcase(a, b) for a, b in zip(name.split("."), parts, strict=True))
        ]
        if not hits:
            raise ConfigError(f"tp plan {pattern!r} matches no module of the recipe's model")
        for name in hits:
            if not torch_style and not isinstance(modules[name], torch.nn.Linear):
                raise ConfigError(
                    f"tp plan {pattern!r}: {name} is a {type(modules[name]).__name__}, not a Linear"
                )
            out[name] = style
    return out


def apply_tp(model: Any, recipe: Any, tp_mesh: Any, sequence_parallel: bool = False) -> Any:
    """Split ``model`` in place over the 1-D ``tp_mesh`` by the recipe's plan; returns it.

    ``sequence_parallel``: ask the recipe for its plan's sequence-parallel form
    (``tp_plan(model, tp, sequence_parallel=True)``, see :func:`takes_sequence_parallel`).
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    kw = {"sequence_parallel": True} if sequence_parallel else {}
    plan = expand_plan(model, recipe.tp_plan(model, tp_mesh.size(), **kw))
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    parallelize_module(
        model,
        tp_mesh,
        {name: styles[style]() if isinstance(style, str) else style for name, style in plan.items()},
    )
    return model


def takes_sequence_parallel(recipe: Any) -> bool:
    """Whether the recipe's ``tp_plan`` takes a ``sequence_parallel`` keyword (or any keyword)."""
    import inspect

    try:
        params = inspect.signature(recipe.tp_plan).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return False
    return any(p.name == "sequence_parallel" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def apply_fsdp(model: Any, policy: Any, dp_mesh: Any = None, recipe: Any = None) -> Any:
    """FSDP2 ``fully_shard`` over ``dp_mesh`` (None: every rank): the recipe's units, then the root.

    A recipe with ``fsdp_units(model) -> [module, ...]`` (transformer blocks, as torchtitan shards
    them) gets one all-gather per unit and one for the root's remaining parameters (embeddings,
    head); without it every submodule that holds parameters directly is its own unit, which works
    for any model but gathers many small pieces. Mixed precision modes compute in the autocast dtype
    and keep fp32 shards, reducing gradients in fp32 (``MixedPrecisionPolicy``).
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw: dict[str, Any] = {} if dp_mesh is None else {"mesh": dp_mesh}
    if policy.spec.autocast is not None:
        # mixed modes: compute in half, keep fp32 shards, reduce gradients in fp32
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=policy.autocast_dtype, reduce_dtype=torch.float32)
    units = getattr(recipe, "fsdp_units", None)
    if units is not None:
        chosen = list(units(model))
    else:
        chosen = [
            m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))
        ]
    for module in chosen:
        fully_shard(module, **kw)
    fully_shard(model, **kw)
    return model


def grad_norm(params: list[Any], max_norm: float, extra_group: Any = None) -> Any:
    """Clip the gradients of ``params`` to total 2-norm ``max_norm``; returns the norm (a 0-d tensor).

    Works on a mix of plain tensors (replicated: counted once) and DTensors (the squares of a local
    shard are summed over the mesh dimensions it is sharded on, one all-reduce per group of
    dimensions; a partial-sum gradient is all-reduced in place first). ``extra_group``: a process
    group whose ranks hold disjoint parameters (pipeline stages), summed over as well. ``max_norm``
    inf clips nothing (the norm is still computed).
    """
    import torch
    from torch.distributed.tensor import DTensor, Replicate, Shard

    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and any(pl.is_partial() for pl in g.placements):
            # a replicated weight used on sequence shards (a SequenceParallel norm) gets a partial-sum
            # gradient: reduce it here, once, so the norm and the optimizer both see the whole sum
            p.grad = g.redistribute(
                g.device_mesh, [Replicate() if pl.is_partial() else pl for pl in g.placements]
            )
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64)
    sharded: dict[tuple[Any, tuple[int, ...]], Any] = {}
    for g in grads:
        if isinstance(g, DTensor):
            local = g.to_local()
            dims = tuple(i for i, pl in enumerate(g.placements) if isinstance(pl, Shard))
            key = (g.device_mesh, dims)
            sq = local.detach().double().pow(2).sum().cpu()
            sharded[key] = sharded.get(key, 0) + sq
        else:
            total += g.detach().double().pow(2).sum().cpu()
    for (mesh, dims), sq in sharded.items():
        sq = torch.as_tensor(sq, dtype=torch.float64)
        for d in dims:
            sq = _all_reduce(sq, mesh.get_group(d))
        total += sq
    if extra_group is not None:
        total = _all_reduce(total, extra_group)
    norm = total.sqrt()
    if max_norm != float("inf") and torch.isfinite(norm):
        coef = min(1.0, max_norm / (float(norm) + 1e-6))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return norm.float()


def _all_reduce(t: Any, group: Any) -> Any:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":  # pragma: no cover - GPU only
        t = t.cuda()
    dist.all_reduce(t, group=group)
    return t.cpu()

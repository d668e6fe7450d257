"""The device layout of a run: how many ranks do data, tensor and pipeline parallelism. Torch-free.

Every check here runs before any process group exists (a bad layout is exit 2 with one line, never a
hang in a collective), and the launcher uses the same rules to map nodes x GPUs per node onto a mesh.

    strategy   mesh (default)                       what each dimension does
    single     -                                    one process
    ddp, fsdp  dp:WORLD                             replicate (DDP) or shard (FSDP2) over every rank
    tp         tp:WORLD                             split each layer's projections (recipe's tp_plan)
    pp         pp:WORLD                             split the layers into stages (recipe's pipeline_split)
    pp x dp    pp:P,dp:D (given as mesh=dp:D,pp:P)  P stages, each replicated D times (gradients averaged)
    fsdp+tp    dp:NODES,tp:GPUS_PER_NODE            FSDP2 across nodes, tensor parallel inside a node

Ranks are laid out row-major with tensor parallelism innermost (ranks ``r`` and ``r+1`` share a tensor
group, as torchtitan and Megatron-LM do), so a tensor group never crosses a node when ``tp`` divides
the GPUs per node. A pipeline with data parallelism puts ``pp`` outermost (torchtitan's and
Megatron-LM's order): the ``D`` replicas of one stage are consecutive ranks, so the gradient all-reduce
stays inside a node and the stages (point-to-point activations, far less traffic) cross nodes when
``D`` divides the GPUs per node; ``--set mesh=pp:NODES`` on NODES x GPUS_PER_NODE gives one stage per
node. The order a ``mesh`` setting is written in does not change the rank order (``dp:2,pp:2`` and
``pp:2,dp:2`` are the same layout, reported as ``pp:2,dp:2``); a pipeline without ``mesh`` stays
``pp:WORLD``.

    >>> resolve("fsdp+tp", "dp:2,tp:2", world=4).shape
    {'dp': 2, 'tp': 2}
    >>> resolve("pp", "dp:2,pp:2", world=4).shape
    {'pp': 2, 'dp': 2}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ampflow.config import ConfigError, RunConfig, parse_mesh

MESH_STRATEGIES = ("tp", "pp", "fsdp+tp")
# the dimensions each strategy may name in its mesh, outermost first
_DIMS = {
    "single": ("dp",),
    "ddp": ("dp",),
    "fsdp": ("dp",),
    "tp": ("tp",),
    # pp outermost: a stage's data-parallel replicas are neighbouring ranks (torchtitan, Megatron-LM)
    "pp": ("pp", "dp"),
    "fsdp+tp": ("dp", "tp"),
}


@dataclass(frozen=True)
class Layout:
    """A strategy on ``world`` ranks as named dimension sizes (``{"dp": 2, "tp": 2}``), outermost first."""

    strategy: str
    shape: dict[str, int]

    @property
    def world(self) -> int:
        return math.prod(self.shape.values())

    def size(self, dim: str) -> int:
        """Size of ``dim`` (1 when the layout has no such dimension)."""
        return self.shape.get(dim, 1)

    def coord(self, rank: int, dim: str) -> int:
        """``rank``'s index along ``dim`` (row-major, last dimension innermost); 0 without ``dim``."""
        if dim not in self.shape:
            return 0
        inner = 1
        for name in reversed(list(self.shape)):
            if name == dim:
                return (rank // inner) % self.shape[name]
            inner *= self.shape[name]
        return 0  # pragma: no cover

    def text(self) -> str:
        """The mesh as a setting spells it: ``dp:2,tp:2``."""
        return ",".join(f"{k}:{v}" for k, v in self.shape.items())


def resolve(strategy: str, mesh: str | None, world: int, local_world: int | None = None) -> Layout:
    """The layout of ``strategy`` on ``world`` ranks (``local_world``: ranks per node, for defaults).

    Raises ConfigError (one line) when ``mesh`` names a dimension ``strategy`` does not use, or when
    its sizes do not multiply to ``world`` (a missing ``dp`` of fsdp+tp is ``world / tp``, a missing
    ``dp`` of pp ``world / pp`` and a missing ``pp`` ``world / dp``: each must divide evenly).
    """
    allowed = _DIMS.get(strategy)
    if allowed is None:  # pragma: no cover - RunConfig validated the name
        raise ConfigError(f"strategy {strategy!r} has no layout")
    if strategy == "single":
        if mesh is not None and parse_mesh(mesh) != {"dp": 1}:
            raise ConfigError(f"mesh {mesh} needs a parallel strategy (tp, pp, fsdp+tp); strategy is single")
        return Layout("single", {"dp": 1})
    if mesh is None:
        if strategy == "fsdp+tp":
            tp = local_world if local_world and world % local_world == 0 else world
            shape = {"dp": world // tp, "tp": tp}
        else:
            shape = {allowed[0]: world}
    else:
        shape = parse_mesh(mesh)
        extra = [d for d in shape if d not in allowed and shape[d] != 1]
        if extra:
            raise ConfigError(
                f"mesh {mesh}: strategy {strategy} uses {', '.join(allowed)}, not {', '.join(extra)}"
            )
        shape = {d: shape[d] for d in allowed if d in shape}
        if strategy == "fsdp+tp":
            tp = shape.get("tp", local_world or world)
            if world % tp:
                raise ConfigError(f"mesh {mesh}: tp:{tp} does not divide the world size {world}")
            shape = {"dp": shape.get("dp", world // tp), "tp": tp}
        if strategy == "pp":
            shape = _pipeline_shape(mesh, shape, world)
    layout = Layout(strategy, shape)
    if layout.world != world:
        raise ConfigError(
            f"mesh {layout.text()} covers {layout.world} ranks but the world size is {world} "
            f"(torchrun --nproc_per_node x --nnodes must equal the product of the mesh sizes)"
        )
    return layout


def _pipeline_shape(mesh: str, shape: dict[str, int], world: int) -> dict[str, int]:
    """``{"pp": P, "dp": D}`` of a pipeline's ``mesh`` (parsed as ``shape``), the one size it leaves out
    filled in from ``world``; a ``dp`` of 1 is dropped (a plain pipeline). ConfigError when the given
    size does not divide ``world``."""
    if "pp" in shape and "dp" in shape:
        pp, dp = shape["pp"], shape["dp"]
    else:
        given = "dp" if "dp" in shape else "pp"
        size = shape.get(given, world)
        if world % size:
            raise ConfigError(f"mesh {mesh}: {given}:{size} does not divide the world size {world}")
        pp, dp = (size, world // size) if given == "pp" else (world // size, size)
    return {"pp": pp, "dp": dp} if dp != 1 else {"pp": pp}


def check(
    config: RunConfig, recipe: Any, info: dict[str, Any], world: int, local_world: int | None
) -> Layout:
    """Every layout rule that can be decided before a process group exists; returns the layout.

    Raises ConfigError: the mesh does not fit the world size; a recipe without ``tp_plan`` under tp
    or fsdp+tp (or, with ``sequence_parallel``, one whose plan has no sequence-parallel form), without
    ``pipeline_split`` / ``pipeline_layers`` under pp; a layer count that does not
    split evenly into the stages; 1F1B with fewer micro-batches (``grad_accum``) than stages; a batch
    size the data-parallel degree does not divide; ``compile`` with fsdp+tp; ``batch_size=auto``
    with a mesh strategy; ``16-mixed`` with pp.
    """
    s = config.strategy
    # what the recipe cannot do comes before the mesh arithmetic: no mesh would make it work
    if s in ("tp", "fsdp+tp") and not callable(getattr(recipe, "tp_plan", None)):
        raise ConfigError(
            f"strategy {s}: recipe {config.recipe!r} declares no tensor-parallel plan (a tp_plan(model, tp) "
            "method, see ampflow.recipes.base); use ddp or fsdp"
        )
    if s in ("tp", "fsdp+tp") and config.sequence_parallel:
        from ampflow.engine.tensor_parallel import takes_sequence_parallel

        if not takes_sequence_parallel(recipe):
            raise ConfigError(
                f"sequence_parallel: recipe {config.recipe!r}'s tp_plan(model, tp) has no sequence-parallel "
                "form (a sequence_parallel keyword, see ampflow.recipes.base); set sequence_parallel=false"
            )
    layout = resolve(s, config.mesh, world, local_world)
    if s == "fsdp+tp" and config.compile:
        # tp alone and a pipeline's stages compile (tests/test_pp_dp.py); torch.compile of the whole
        # FSDP2 x tensor-parallel model fails in torch 2.13 (a shape mismatch inside the compiled graph)
        raise ConfigError(
            "compile is not supported with strategy fsdp+tp yet; drop --compile or use ddp, fsdp, tp or pp"
        )
    if s in MESH_STRATEGIES and config.batch_size == "auto":
        # the search times the whole model in each process: it says nothing about a split one
        raise ConfigError(f"batch_size=auto is not supported with strategy {s}; give batch_size=N")
    if s == "pp":
        if not (
            callable(getattr(recipe, "pipeline_split", None))
            and callable(getattr(recipe, "pipeline_layers", None))
        ):
            raise ConfigError(
                f"strategy pp: recipe {config.recipe!r} declares no pipeline split (pipeline_split(model) and "
                "pipeline_layers(info), see ampflow.recipes.base); use ddp or fsdp"
            )
        layers, stages = int(recipe.pipeline_layers(info)), layout.size("pp")
        if layers % stages:
            raise ConfigError(
                f"mesh pp:{stages}: the recipe's {layers} layers do not split evenly into {stages} stages"
            )
        if config.pp_schedule == "1f1b" and config.grad_accum < stages:
            raise ConfigError(
                f"pp_schedule 1f1b needs at least as many micro-batches (grad_accum={config.grad_accum}) "
                f"as stages ({stages})"
            )
        if config.precision == "16-mixed":
            raise ConfigError(
                "precision 16-mixed under strategy pp: the loss scaler is not wired into the schedule"
            )
    dp = layout.size("dp")
    if isinstance(config.batch_size, int) and config.batch_size % dp:
        raise ConfigError(f"batch_size {config.batch_size} must be a multiple of the data-parallel size {dp}")
    return layout


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The idle share of a GPipe or 1F1B schedule: ``(p - 1) / (m + p - 1)`` (Huang et al. 2019).

    ``stages`` p and ``microbatches`` m, both >= 1; 0 for one stage. Both schedules idle the same
    share; 1F1B holds fewer activations (Narayanan et al. 2021).
    """
    return (stages - 1) / (microbatches + stages - 1)

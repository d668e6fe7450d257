"""Process-group set-up, model wrapping (DDP, FSDP2, tensor, pipeline, FSDP2 x tensor) and cross-rank reductions.

Global batch semantics: ``batch_size`` is the global micro-batch. Every rank walks the same seeded
permutation and takes its contiguous ``batch_size / world_size`` slice of each global batch, so 1 or N
processes see the same samples per optimizer step (DDP averages gradients over ranks, which equals the
gradient of the global mean loss). Under tp, pp and fsdp+tp only the mesh's ``dp`` ranks split the
batch; the ranks of one tensor group or one pipeline read the same samples (:mod:`.mesh`).

    torchrun --nproc_per_node=2 -m ampflow train --strategy ddp --recipe R --data D --out RUN
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ampflow.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size, local rank, and whether this module started the process group.

    ``layout`` (:class:`ampflow.engine.mesh.Layout`) and ``mesh`` (its ``DeviceMesh``) are set for
    the mesh strategies (tp, pp, fsdp+tp); without them every rank is a data-parallel rank.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    layout: Any = None
    mesh: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and tracks."""
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        """Ranks that read different samples (the global batch is split over them)."""
        return self.layout.size("dp") if self.layout is not None else self.world_size

    @property
    def dp_rank(self) -> int:
        """This rank's index among :attr:`dp_size` (ranks of one tensor group or pipeline share it)."""
        return self.layout.coord(self.rank, "dp") if self.layout is not None else self.rank


def current() -> DistInfo:
    """Rank and world size from torch.distributed when a process group exists, else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def require_launcher(strategy: str) -> None:
    """Raise ConfigError when a distributed ``strategy`` runs outside torchrun (no RANK/MASTER_ADDR)."""
    if strategy != "single" and ("RANK" not in os.environ or "MASTER_ADDR" not in os.environ):
        raise ConfigError(
            f"strategy {strategy} needs a launcher: torchrun --nproc_per_node=N -m ampflow train --strategy "
            f"{strategy} ... (or --strategy single)"
        )


def init(strategy: str, device_kind: str, mesh: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA) for every strategy but single.

    The mesh strategies (tp, pp, fsdp+tp) also get their ``DeviceMesh``; their layout is resolved
    (and refused, ConfigError) before the process group is created.
    """
    import torch.distributed as dist

    from ampflow.engine import mesh as meshes

    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "single":
        if env_world > 1:
            raise ConfigError(
                f"strategy single under a launcher with WORLD_SIZE={env_world}: use --strategy ddp or fsdp"
            )
        return current()
    if dist.is_available() and dist.is_initialized():
        return current()
    require_launcher(strategy)
    layout = None
    if strategy in meshes.MESH_STRATEGIES:
        local = os.environ.get("LOCAL_WORLD_SIZE")
        layout = meshes.resolve(strategy, mesh, env_world, int(local) if local else None)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    info = current()
    device_mesh = None
    if layout is not None:
        from torch.distributed.device_mesh import init_device_mesh

        device_mesh = init_device_mesh(
            device_kind, tuple(layout.shape.values()), mesh_dim_names=tuple(layout.shape)
        )
    return DistInfo(info.rank, info.world_size, info.local_rank, True, layout, device_mesh)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if :func:`init` created it."""
    import torch.distributed as dist

    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap(
    model: Any,
    strategy: str,
    policy: Any,
    device: Any,
    dist: DistInfo | None = None,
    recipe: Any = None,
    sequence_parallel: bool = False,
) -> Any:
    """DDP or FSDP2 around ``model`` (already on ``device``); single returns it unchanged.

    tp, fsdp+tp and pp need ``dist`` (with its mesh) and the ``recipe`` (its plan or split): tp splits
    in place (the plan's sequence-parallel form with ``sequence_parallel``), fsdp+tp splits then
    shards, pp returns this rank's stage module.
    """
    if strategy == "single":
        return model
    if strategy in ("tp", "fsdp+tp"):
        from ampflow.engine import tensor_parallel

        mesh = dist.mesh
        tensor_parallel.apply_tp(model, recipe, mesh["tp"], sequence_parallel=sequence_parallel)
        return (
            tensor_parallel.apply_fsdp(model, policy, mesh["dp"], recipe) if strategy == "fsdp+tp" else model
        )
    if strategy == "pp":
        from ampflow.engine import pipeline

        return pipeline.build_stage(model, recipe, dist.layout.coord(dist.rank, "pp"), dist.layout.size("pp"))
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from ampflow.engine import tensor_parallel

        return tensor_parallel.apply_fsdp(model, policy, None, recipe)
    raise ConfigError(f"strategy must be one of single, ddp, fsdp, tp, pp, fsdp+tp; got {strategy!r}")


def make_stepper(strategy: str, dist: DistInfo, pp_schedule: str, *args: Any, **kwargs: Any) -> Any:
    """The optimizer step of ``strategy``: a :class:`~ampflow.engine.step.Stepper` (``args``/``kwargs``
    are its fields), whose clipping sums DTensor shards under tp / fsdp+tp, or under pp a
    :class:`~ampflow.engine.pipeline.PipelineStepper` running ``pp_schedule`` over the micro-batches
    (and averaging gradients over the mesh's ``dp`` dimension when it has one)."""
    from ampflow.engine.step import Stepper

    if strategy == "pp":
        from ampflow.engine.pipeline import PipelineStepper

        kwargs.pop("ddp", None)
        return PipelineStepper(
            *args,
            **kwargs,
            stage=dist.layout.coord(dist.rank, "pp"),
            stages=dist.layout.size("pp"),
            pp_group=dist.mesh.get_group("pp"),
            schedule=pp_schedule,
            # the stage's replicas in the other pipelines (mesh pp:P,dp:D), None without any
            dp_group=dist.mesh.get_group("dp") if dist.layout.size("dp") > 1 else None,
        )
    stepper = Stepper(*args, **kwargs)
    if strategy in ("tp", "fsdp+tp"):
        from ampflow.engine.tensor_parallel import grad_norm

        stepper.clip_fn = grad_norm
    return stepper


def unwrap(model: Any) -> Any:
    """The user's module under DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner) if type(inner).__name__ == "DistributedDataParallel" else inner
    return getattr(inner, "_orig_mod", inner)


def all_reduce(values: list[float], op: str, device: Any) -> list[float]:
    """Sum / max / min of a few floats across ranks (identity on one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    dev = device if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return [float(x) for x in t.cpu().tolist()]


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` (picklable) on every rank: a collective, all ranks call (identity alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

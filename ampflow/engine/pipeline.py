"""Pipeline parallelism (``--strategy pp``): the recipe's layers split into stages, one per rank, the
pipeline optionally replicated over data-parallel groups (``--set mesh=dp:D,pp:P``).

A recipe declares ``pipeline_split(model) -> (first, layers, last)``: ``first`` takes the model's inputs
as keywords and returns a state tensor, each of ``layers`` maps a state to a state, ``last`` maps a
state to logits ``(batch, classes)``; each part lists in ``owns`` the names of the model's submodules
it computes with. ``pipeline_layers(info)`` gives the layer count before any model exists, so a layer
count the stages do not divide is refused before the process group starts. Stage ``s`` of ``p`` runs
``first`` (s = 0), ``len(layers) / p`` consecutive layers, and ``last`` (s = p - 1); the other parts'
submodules are replaced by empty modules on that rank, so it holds only its own weights, under the
same parameter names as the whole model (a checkpoint of a pipeline loads under any layout).

One optimizer step is one ``torch.distributed.pipelining`` schedule step (``ScheduleGPipe`` or
``Schedule1F1B``, ``pp_schedule``) over the step's ``grad_accum`` micro-batches; the schedule divides
the summed gradients by the micro-batch count, which is what one process's accumulation does. The
schedule's idle share, ``(p - 1) / (m + p - 1)``, is reported as ``pp_bubble_fraction``.

With data parallelism (mesh ``pp:P,dp:D``, :mod:`.mesh`: ``pp`` outermost, so the ``D`` replicas of a
stage are neighbouring ranks) each of the ``D`` pipelines reads its own ``batch_size / D`` slice of
every global micro-batch (the mesh's ``dp`` coordinate, as under tp); within one pipeline every stage
walks the same micro-batches (stage 0 feeds the inputs, the last stage the labels). After the
schedule's backward each stage's gradients are averaged over its ``dp`` group by an explicit
all-reduce (sum, then divide by ``D``: DDP's arithmetic), in buckets of :data:`BUCKET_BYTES`, before
clipping: the mean of the ``D`` pipelines' mean losses is the global batch's mean loss, so the step
equals one process's over the same global batch. An explicit all-reduce rather than DDP or FSDP2 on
the stage: ``torch.distributed.pipelining`` runs the stage's backward through
``torch.autograd.backward`` on its own, so DDP's hooks would need the schedule's cooperation (it
special-cases only FSDP2), and FSDP2 would turn the stage's weights into DTensor shards, which the
full-format checkpoint's merge of a pipeline's stages (plain tensors by name, :mod:`.state`) does not
take; the weights stay plain tensors, replicated. The price: the reduction does not overlap the
backward, and each replica holds its stage's whole optimizer state (FSDP2 would shard it). The
gradient norm is summed over the ``pp`` group only, after the average, so the ``D`` identical replicas
are counted once.

``--compile`` compiles each rank's whole stage (the trainer's ``torch.compile`` of the
:class:`StageModule`, which ``PipelineStage`` calls once per micro-batch; checked in torch 2.13 on CPU
with GPipe and 1F1B, without graph breaks or recompiles: the stage's input shapes are fixed per run).
The first step compiles (``compile_s``); the loss function and validation run eagerly.

Validation (``val_every``) runs the val split forward through the stages with plain point-to-point
sends (:meth:`PipelineStepper.val_accuracy`): each batch of ``eval_batch_size`` goes stage by stage,
the last stage counts the correct predictions and the count is summed over ranks, so every stage holds
the same accuracy and takes the same ``stop_at_target`` decision. Under ``dp`` each pipeline scores its
own shard of the split (:func:`ampflow.engine.validation.shard_indices`), each example counted once.

    torchrun --nproc_per_node=2 -m ampflow train --strategy pp --set grad_accum=4 --recipe tweets-minilm ...
    torchrun --nproc_per_node=4 -m ampflow train --strategy pp --set mesh=dp:2,pp:2 --set grad_accum=4 ...
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ampflow.engine import tensor_parallel
from ampflow.engine.mesh import bubble_fraction
from ampflow.engine.step import StepOutcome

# most bytes of gradients one data-parallel all-reduce carries (DDP's default bucket size)
BUCKET_BYTES = 25 * 1024 * 1024


class StageModule(nn.Module):
    """One stage: the model's (remaining) top-level children under their own names, and its parts."""

    def __init__(self, model: nn.Module, parts: list[Any], first: bool) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self.__dict__["parts"] = parts
        self.first = first

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        parts = self.parts
        state = parts[0](**kwargs) if self.first else parts[0](*args)
        for part in parts[1:]:
            state = part(state)
        return state


def build_stage(model: nn.Module, recipe: Any, stage: int, stages: int) -> StageModule:
    """Stage ``stage`` of ``stages`` cut out of ``model`` (whose other parts' weights are dropped)."""
    first, layers, last = recipe.pipeline_split(model)
    per = len(layers) // stages
    mine = list(layers[stage * per : (stage + 1) * per])
    parts = ([first] if stage == 0 else []) + mine + ([last] if stage == stages - 1 else [])
    keep = {name for part in parts for name in part.owns}
    for part in [first, *layers, last]:
        if part in parts:
            continue
        for name in part.owns:
            if name not in keep:
                parent, _, leaf = name.rpartition(".")
                holder = model.get_submodule(parent) if parent else model
                setattr(holder, leaf, nn.Module())  # an empty stand-in keeps the other names' indices
    return StageModule(model, parts, first=stage == 0)


class PipelineStepper:
    """The pipeline's optimizer step, with :class:`ampflow.engine.step.Stepper`'s call and outcome.

    ``model`` is this rank's :class:`StageModule`; ``inputs`` / ``labels`` the whole train split (the
    first stage reads inputs, the last labels); ``pp_group`` the pipeline's process group with stage
    ``stage`` of ``stages`` here; ``dp_group`` (None: no data parallelism) the process group of this
    stage's replicas in the other pipelines, over which gradients and the loss are averaged. The loss,
    the gradient norm and the step decision are the same on every rank (the loss is broadcast from the
    last stage and averaged over ``dp_group``, the norm summed over stages after the average).
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        policy: Any,
        loss_fn: Any,
        inputs: dict[str, Any],
        labels: Any,
        device: Any,
        clip: float | None,
        grad_accum: int,
        *,
        stage: int,
        stages: int,
        pp_group: Any,
        schedule: str,
        dp_group: Any = None,
    ):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.model, self.optimizer, self.scheduler, self.policy = model, optimizer, scheduler, policy
        self.inputs, self.labels, self.device, self.clip = inputs, labels, device, clip
        self.grad_accum, self.stage, self.stages, self.group = grad_accum, stage, stages, pp_group
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pipe_stage = PipelineStage(model, stage, stages, device, group=pp_group)
        kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
        self.schedule = kind(self.pipe_stage, n_microbatches=grad_accum, loss_fn=loss_fn)
        self.last_rank = torch.distributed.get_global_rank(pp_group, stages - 1)
        self.dp_group = dp_group
        self.dp_size = torch.distributed.get_world_size(dp_group) if dp_group is not None else 1

    def fetch(self, idx: Any) -> tuple[dict[str, Any], Any]:
        """A micro-batch at sample indices ``idx`` (the trainer replaces this with its data's fetch)."""
        return {k: v.index_select(0, idx) for k, v in self.inputs.items()}, self.labels.index_select(0, idx)

    def _whole_step(self, micro: list[Any]) -> tuple[dict[str, Any], Any]:
        """The step's micro-batches as one batch the schedule cuts again, in the same order.

        A micro-batch cut to a shorter padded length (bucketing) is padded back with zeros (the pad
        token and a 0 mask) to the split's full width: a stage's buffers have one shape per run.
        """
        fetched = [self.fetch(ref) for ref in micro]
        inputs = {}
        for k in fetched[0][0]:
            parts = [f[0][k] for f in fetched]
            full = self.inputs[k].shape[1] if k in self.inputs and self.inputs[k].dim() > 1 else None
            if full is not None:
                parts = [
                    torch.nn.functional.pad(p, (0, full - p.shape[1])) if p.shape[1] < full else p
                    for p in parts
                ]
            inputs[k] = torch.cat(parts)
        return inputs, torch.cat([f[1] for f in fetched])

    def val_accuracy(
        self,
        model: Any,
        inputs: dict[str, Any],
        labels: Any,
        *,
        policy: Any,
        batch_size: int,
        rank: int,
        world: int,
        device: Any,
    ) -> float:
        """The accuracy of the whole pipeline on a split, the same on every stage (the contract of
        :func:`ampflow.engine.validation.val_accuracy`; ``model`` is this rank's stage).

        Every stage walks the split in the same batches of ``batch_size``: the first stage runs its
        part on the inputs and sends the state on, each other stage receives it (shape and dtype first)
        and runs its part, the last counts hits. Forward only, in eval mode, without gradients.
        ``rank`` / ``world`` are the mesh's data-parallel coordinate and size: each pipeline walks its
        :func:`~ampflow.engine.validation.shard_indices` (the whole split without ``dp``), the wrapped
        padding positions scored but not counted, so the sum over ranks counts each example once.
        """
        from ampflow.engine import parallel
        from ampflow.engine.validation import shard_indices

        n = int(labels.shape[0])
        idx, valid = shard_indices(n, rank, world)
        idx, valid = idx.to(labels.device), valid.to(labels.device)
        prev = torch.distributed.get_global_rank(self.group, self.stage - 1) if self.stage else None
        last = self.stage == self.stages - 1
        nxt = None if last else torch.distributed.get_global_rank(self.group, self.stage + 1)
        was_training = model.training
        model.eval()
        correct = 0
        try:
            with torch.no_grad():
                for lo in range(0, len(idx), batch_size):
                    sel, ok = idx[lo : lo + batch_size], valid[lo : lo + batch_size]
                    with policy.autocast():
                        if prev is None:
                            out = model(**{k: v.index_select(0, sel) for k, v in inputs.items()})
                        else:
                            out = model(_recv(prev, self.group, device))
                    if nxt is not None:
                        _send(out, nxt, self.group)
                    else:
                        hits = (out.float().argmax(dim=1) == labels.index_select(0, sel)) & ok
                        correct += int(hits.sum().item())
        finally:
            model.train(was_training)
        return parallel.all_reduce([float(correct)], "sum", device)[0] / n

    def figures(self) -> dict[str, Any]:
        """result.json metrics of the pipeline: its stages, micro-batches and bubble fraction."""
        return {
            "pp_stages": self.stages,
            "pp_microbatches": self.grad_accum,
            "pp_bubble_fraction": bubble_fraction(self.stages, self.grad_accum),
        }

    def __call__(self, micro_indices: list[Any]) -> StepOutcome:
        t0 = time.perf_counter()
        inputs, labels = self._whole_step(micro_indices)
        data_s = time.perf_counter() - t0
        losses: list[Any] = []
        with self.policy.autocast():
            if self.stage == 0:
                self.schedule.step(**inputs)
            elif self.stage == self.stages - 1:
                self.schedule.step(target=labels, losses=losses)
            else:
                self.schedule.step()
        mean = torch.stack([x.detach().float() for x in losses]).mean() if losses else torch.zeros(())
        # on the device: NCCL moves only device tensors (gloo runs on the CPU device here anyway)
        mean = mean.reshape(1).to(self.device, torch.float32)
        torch.distributed.broadcast(mean, src=self.last_rank, group=self.group)
        if self.dp_group is not None:
            # the pipelines' mean losses (equal shares of the global batch) averaged: the global mean
            mean = _dp_all_reduce(mean, self.dp_group) / self.dp_size
            self._average_grads()
        loss_val = float(mean.item())
        self.policy.unscale(self.optimizer)
        max_norm = self.clip if self.clip is not None else float("inf")
        norm = float(tensor_parallel.grad_norm(self.params, max_norm, extra_group=self.group).item())
        finite = (
            loss_val == loss_val and abs(loss_val) != float("inf") and norm == norm and norm != float("inf")
        )
        stepped = self.policy.step(self.optimizer, grads_finite=finite)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss_val, stepped, data_s, norm)

    def _average_grads(self) -> None:
        """Average this stage's gradients over its data-parallel replicas, in place: one all-reduce
        (sum) per bucket of at most :data:`BUCKET_BYTES` of one dtype, divided by the replica count.

        Parameters without a gradient are left out; every replica of a stage holds the same modules
        and inputs of the same shapes, so they leave out the same ones and the buckets line up.
        """
        buckets: dict[Any, list[list[Any]]] = {}  # (dtype, device) -> its buckets, the last filling
        filled: dict[Any, int] = {}  # bytes in each key's last bucket
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            key, nbytes = (g.dtype, g.device), g.numel() * g.element_size()
            chain = buckets.setdefault(key, [[]])
            if chain[-1] and filled[key] + nbytes > BUCKET_BYTES:
                chain.append([])
                filled[key] = 0
            chain[-1].append(g)
            filled[key] = filled.get(key, 0) + nbytes
        for grads in (bucket for chain in buckets.values() for bucket in chain):
            flat = _dp_all_reduce(torch.cat([g.reshape(-1) for g in grads]), self.dp_group)
            flat.div_(self.dp_size)
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))


def _dp_all_reduce(t: Any, group: Any) -> Any:
    """The sum of ``t`` over ``group`` (a new tensor, on ``t``'s device)."""
    out = t.detach().clone()
    torch.distributed.all_reduce(out, group=group)
    return out


# the dtypes a stage state may travel in (fp32, or the half type of an autocast region)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_HEAD = 10  # ndim, up to 8 sizes, dtype index


def _send(t: Any, dst: int, group: Any) -> None:
    """Send ``t`` to global rank ``dst``: a header (ndim, shape, dtype) then the data."""
    head = torch.zeros(_HEAD, dtype=torch.int64)
    head[0] = t.dim()
    head[1 : 1 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    head[_HEAD - 1] = _DTYPES.index(t.dtype)
    torch.distributed.send(head.to(t.device), dst=dst, group=group)
    torch.distributed.send(t.contiguous(), dst=dst, group=group)


def _recv(src: int, group: Any, device: Any) -> Any:
    """The tensor :func:`_send` sent from global rank ``src``, on ``device``."""
    head = torch.empty(_HEAD, dtype=torch.int64, device=device)
    torch.distributed.recv(head, src=src, group=group)
    h = [int(x) for x in head.cpu().tolist()]
    t = torch.empty(h[1 : 1 + h[0]], dtype=_DTYPES[h[_HEAD - 1]], device=device)
    torch.distributed.recv(t, src=src, group=group)
    return t

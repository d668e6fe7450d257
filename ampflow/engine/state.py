"""Training state across a checkpoint: what is saved, and how each strategy saves and restores it.

Two formats (``checkpoint_format``; the files are :mod:`ampflow.engine.checkpoint`), and either one
resumes under any other strategy or mesh:

- **sharded** (``auto``'s choice for fsdp, tp, fsdp+tp and pp): every rank writes its own shards with
  ``torch.distributed.checkpoint`` (DCP) — DTensor shards under fsdp/tp/fsdp+tp, each stage's own
  parameters under pp, replicated tensors once. Nothing is gathered on one rank, so a checkpoint costs
  each rank its own share of memory and I/O. On load, every rank asks DCP for its layout's state dict
  (``get_model_state_dict`` / ``get_optimizer_state_dict`` with ``flatten_optimizer_state_dict``, the
  per-parameter keys that survive a change of layout) and DCP reads the overlapping pieces (resharding).
- **full** (``auto``'s choice for single and ddp): one file with whole tensors under the plain model's
  names; ``fsdp``/``tp``/``fsdp+tp`` state is gathered collectively and scattered back through
  ``get_state_dict`` / ``set_state_dict`` with full state dicts, ``pp`` stages are merged on rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ampflow import __version__
from ampflow.config import RunConfig
from ampflow.data.batching import Position
from ampflow.engine import checkpoint, parallel


@dataclass
class Progress:
    """What the loop accumulates besides weights: the data position, the loss curve, the non-finite streak,
    the validation curve ``[[step, train_clock_s, val_accuracy], ...]`` and the training clock's reading
    (seconds, :mod:`ampflow.engine.validation`) when the checkpoint was written."""

    pos: Position = field(default_factory=Position)
    loss_curve: list[list[float]] = field(default_factory=list)
    nonfinite_run: int = 0
    val_curve: list[list[float]] = field(default_factory=list)
    train_clock_s: float = 0.0

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> Progress:
        """From a loaded checkpoint (``None``: a fresh run)."""
        if state is None:
            return cls()
        saved = dict(state.get("progress") or {})
        return cls(
            Position(int(state["step"]), int(state["epoch"]), int(state["index"])),
            [list(x) for x in saved.get("loss_curve", [])],
            int(saved.get("nonfinite_run", 0)),
            [list(x) for x in saved.get("val_curve", [])],
            float(saved.get("train_clock_s", 0.0)),
        )


# strategies whose weights are DTensors: their full state is gathered and scattered collectively
_SHARDED = ("fsdp", "tp", "fsdp+tp")


def _flat() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # per-parameter optimizer keys: a pipeline stage's or a shard's entries never collide with another's
    return StateDictOptions(flatten_optimizer_state_dict=True)


def sharded_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """This rank's ``{"model": ..., "optimizer": ...}`` in its own layout (DTensor shards, a stage's
    parameters, or whole tensors), as DCP saves it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {"model": get_model_state_dict(model), "optimizer": _optimizer_shards(model, optimizer)}


def _optimizer_shards(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's state in this rank's layout, flattened per parameter (DCP's ``optimizer`` entry)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_flat())


def wrap_and_restore(
    model: Any,
    strategy: str,
    policy: Any,
    device: Any,
    state: dict[str, Any] | None,
    dist: Any = None,
    recipe: Any = None,
    sequence_parallel: bool = False,
) -> Any:
    """Wrap ``model`` for ``strategy`` and load the checkpoint's weights (``state`` None: none).

    A sharded checkpoint loads after wrapping, each rank reading its layout's pieces through DCP. A
    full one holds the whole model under its own parameter names, whatever layout wrote it, so it
    loads under any other as well: single, ddp, tp and pp load it before wrapping (DDP then
    broadcasts, tensor parallelism splits, a pipeline keeps its stage); FSDP2 loads after sharding, from
    the full state dict every rank holds. ``dist``, ``recipe`` and ``sequence_parallel``: see
    :func:`parallel.wrap`.
    """
    if state is not None and "shards" in state:  # every layout loads its own pieces, after wrapping
        model = parallel.wrap(model, strategy, policy, device, dist, recipe, sequence_parallel)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        weights = {"model": get_model_state_dict(model)}
        checkpoint.load_shards(state["shards"], weights)
        set_model_state_dict(model, weights["model"])
        return model
    if state is not None and strategy not in ("fsdp", "fsdp+tp"):
        model.load_state_dict(state["model"])
    model = parallel.wrap(model, strategy, policy, device, dist, recipe, sequence_parallel)
    if state is not None and strategy in ("fsdp", "fsdp+tp"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state["model"], options=StateDictOptions(full_state_dict=True))
    return model


def model_state(model: Any, strategy: str) -> dict[str, Any]:
    """The full, unwrapped model state on CPU (collective except under single/ddp: every rank calls).

    Under fsdp, tp and fsdp+tp rank 0 gets the gathered tensors (others an empty dict); under pp
    rank 0 gets every stage's weights (others their own).
    """
    if strategy == "pp":
        local = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return _merge_on_main(local, lambda parts: {k: v for p in parts for k, v in p.items()})
    if strategy in _SHARDED:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in parallel.unwrap(model).state_dict().items()}


def optimizer_state(optimizer: Any, model: Any, strategy: str) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name (collective under FSDP: every rank calls).

    One format for every strategy (``torch.distributed.checkpoint.state_dict``'s fully-qualified names,
    which work on plain, DDP and FSDP2 modules alike), so a checkpoint resumes under any strategy.
    ``strategy`` is kept for the callers' symmetry with :func:`model_state`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if strategy == "pp":  # each stage holds its own parameters: rank 0 merges the stages' states
        local = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(cpu_offload=True))
        return _merge_on_main(local, _merge_optimizer_states)
    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def _merge_on_main(local: dict[str, Any], merge: Any) -> dict[str, Any]:
    """``merge`` of every rank's ``local`` on rank 0 (a collective); other ranks get ``local`` back."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, parts, dst=0)
    return merge(parts) if parts is not None else local


def _merge_optimizer_states(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pipeline stages' optimizer states (disjoint parameters) as one, group by group, in stage order.

    Under a ``pp x dp`` mesh every stage arrives once per data-parallel replica (equal states, the
    gradients being averaged over the replicas): each parameter is kept once, at its first place."""
    state = {k: v for p in parts for k, v in p["state"].items()}
    groups = [dict(g) for g in parts[0]["param_groups"]]
    for g_index, group in enumerate(groups):
        names = (name for p in parts for name in p["param_groups"][g_index]["params"])
        group["params"] = list(dict.fromkeys(names))
    return {"state": state, "param_groups": groups}


def load_optimizer(optimizer: Any, model: Any, state: dict[str, Any], strategy: str) -> None:
    """Load the optimizer state of a loaded checkpoint ``state``, written under any strategy: from its
    shards (sharded format) or from ``state["optimizer"]`` (full, saved by :func:`optimizer_state`).

    Checkpoints written before the one format (``optimizer.state_dict()``'s integer keys, by single and
    ddp) are renamed first: the k-th parameter they list is the k-th of this optimizer's parameter
    groups, since both come from the same recipe and the same optimizer construction.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if "shards" in state:  # a sharded checkpoint: this layout's pieces of the flattened state, via DCP
        mine = {"optimizer": _optimizer_shards(model, optimizer)}
        checkpoint.load_shards(state["shards"], mine)
        set_optimizer_state_dict(model, optimizer, mine["optimizer"], options=_flat())
        return
    state = state["optimizer"]
    if any(isinstance(k, int) for k in state.get("state", {})) or any(
        isinstance(i, int) for g in state.get("param_groups", []) for i in g["params"]
    ):
        state = _named(state, optimizer, model)
    if strategy == "pp":  # this stage's share of the whole model's state, by parameter name
        mine = {n for n, _ in model.named_parameters()}
        state = {
            "state": {k: v for k, v in state["state"].items() if k in mine},
            "param_groups": [
                {**g, "params": [n for n in g["params"] if n in mine]} for g in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions())
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _named(state: dict[str, Any], optimizer: Any, model: Any) -> dict[str, Any]:
    """An integer-keyed ``optimizer.state_dict()`` keyed by parameter names instead."""
    names = {id(p): n for n, p in parallel.unwrap(model).named_parameters()}
    live = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(live):
        raise ValueError(f"checkpoint optimizer has {len(saved)} parameters, this model {len(live)}")
    rename = dict(zip(saved, live, strict=True))
    return {
        "state": {rename[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [rename[i] for i in g["params"]]} for g in state["param_groups"]],
    }


@dataclass
class TrainState:
    """Everything a checkpoint holds, as live objects; :meth:`save` writes it, :meth:`restore` reads it.

    ``config`` is the run's resolved configuration (an int batch size); ``is_main`` says whether this
    rank writes the file.
    """

    path: Path
    model: Any
    optimizer: Any
    scheduler: Any
    policy: Any
    config: RunConfig
    recipe_name: str
    data_hash: str | None
    is_main: bool
    progress: Progress = field(default_factory=Progress)

    def restore(self, state: dict[str, Any] | None) -> None:
        """Load optimizer, scheduler, precision (loss scale), RNG and progress from a loaded checkpoint.

        The model's weights are loaded earlier, by :func:`wrap_and_restore`. ``None`` does nothing.
        """
        if state is None:
            return
        load_optimizer(self.optimizer, self.model, state, self.config.strategy)
        self.scheduler.load_state_dict(state["scheduler"])
        self.policy.load_state_dict(state["precision"])
        self.progress = Progress.of(state)
        checkpoint.set_rng_state(state["rng"])

    def save(self, *, finished: bool) -> dict[str, Any] | None:
        """Write the checkpoint (every rank must call). Full format: rank 0 writes one file and the
        gathered model state it holds is returned (rank 0; see :func:`model_state`). Sharded: every
        rank writes its shards, rank 0 then points ``checkpoint.pt`` at them; returns None."""
        if self.config.sharded_checkpoints:
            self._save_sharded(finished)
            return None
        # gathering FSDP state is collective: every rank takes part, rank 0 writes
        weights = model_state(self.model, self.config.strategy)
        optim = optimizer_state(self.optimizer, self.model, self.config.strategy)
        if self.is_main:
            checkpoint.save(self.path, {**self._meta(finished), "model": weights, "optimizer": optim})
            checkpoint.prune_shards(self.path.parent, keep=None)  # a resumed sharded run's old shards
        parallel.barrier()
        return weights

    def _save_sharded(self, finished: bool) -> None:
        run_dir = self.path.parent
        # one new directory name for every rank; the one checkpoint.pt names now is never written over
        shards = parallel.broadcast_object(
            checkpoint.new_shards_dir(run_dir, self.progress.pos.step) if self.is_main else None
        )
        checkpoint.save_shards(run_dir / shards, sharded_state(self.model, self.optimizer))
        if self.is_main:  # DCP returns once every rank's shards and the .metadata are written
            checkpoint.save(self.path, {**self._meta(finished), "shards": shards})
            checkpoint.prune_shards(run_dir, keep=shards)
        parallel.barrier()

    def load_final_weights(self, plain: Any) -> None:
        """Load the last checkpoint's weights into ``plain``, a fresh unwrapped model (rank 0, alone)."""
        checkpoint.load_model_weights(plain, checkpoint.load(self.path))

    def _meta(self, finished: bool) -> dict[str, Any]:
        """Everything a checkpoint holds besides the model and optimizer state (rank 0's)."""
        pos = self.progress.pos
        return {
            "step": pos.step,
            "epoch": pos.epoch,
            "index": pos.index,
            "finished": finished,
            "scheduler": self.scheduler.state_dict(),
            "precision": self.policy.state_dict(),
            "rng": checkpoint.rng_state(),
            "config": self.config.to_dict(),
            "recipe": self.config.recipe,
            "recipe_name": self.recipe_name,
            "dataset_hash": self.data_hash,
            "ampflow_version": __version__,
            "progress": {
                "loss_curve": self.progress.loss_curve,
                "nonfinite_run": self.progress.nonfinite_run,
                "val_curve": self.progress.val_curve,
                "train_clock_s": self.progress.train_clock_s,
            },
        }

"""Typed, validated run configuration. Torch-free: KFP compiles and Airflow parses import this.

Every field is a plain value so that a config round-trips through JSON, CLI ``--set key=value``
overrides, KFP parameters and Airflow params without loss.

    >>> cfg = RunConfig(recipe="tweets-bow", precision="bf16-mixed")
    >>> cfg = cfg.with_overrides(["max_steps=50", "batch_size=auto"])
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Precision = Literal["32-true", "tf32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "fp8"]
# tp, pp and fsdp+tp: tensor, pipeline and 2-D (FSDP2 x tensor) parallelism, see ampflow.engine.mesh
Strategy = Literal["single", "ddp", "fsdp", "tp", "pp", "fsdp+tp"]
Device = Literal["auto", "cpu", "cuda"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
# modes that run fp16 math: refused on CPU (no fp16 training there), never emulated
CUDA_ONLY_PRECISIONS: tuple[str, ...] = ("16-mixed", "16-true")
# fp8 (torchao float8 training) needs fp8 tensor cores: CUDA compute capability 8.9 (Ada) or later
FP8_PRECISIONS: tuple[str, ...] = ("fp8",)
FP8_MIN_CAPABILITY: tuple[int, int] = (8, 9)
# the compute dtypes a peak FLOP/s figure (MFU's denominator) is given for
PEAK_DTYPES: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8")
LR_SCHEDULES = ("linear", "cosine", "constant")
PAD_TO = ("bucket", "max")
DATA_LOADING = ("auto", "memory", "stream")
# how the learning rate follows the global batch (ampflow.engine.lr_scaling); none keeps it as given
LR_SCALING_RULES = ("none", "linear", "sqrt")
PP_SCHEDULES = ("gpipe", "1f1b")
CHECKPOINT_FORMATS = ("auto", "full", "sharded")
# strategies whose ranks hold different parameters: checkpoint_format=auto writes them as shards
SHARDED_CHECKPOINT_STRATEGIES = ("fsdp", "tp", "fsdp+tp", "pp")
# mesh dimension names a `mesh` setting may use (data, tensor, pipeline parallel)
MESH_DIMS = ("dp", "tp", "pp")
_DEFAULT_TIMING_WARMUP = 5
# What a run uses when neither its own settings nor its recipe's ``defaults`` give a value. The
# batch size and the learning rate are filled in by RunConfig.resolve; the others depend on the
# dataset's size and are read through RunConfig.total_steps / RunConfig.lr_plan.
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_EPOCHS = 1
DEFAULT_LR_SCHEDULE = "linear"
# learning-rate warm-up: 1/20 (5%) of the run's optimizer steps, at least one
DEFAULT_LR_WARMUP_DIVISOR = 20
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEVICES: tuple[str, ...] = get_args(Device)
BASELINE_PRECISION = "32-true"


class ConfigError(ValueError):
    """Bad input. The message is one line that names the field and what is allowed (CLI exit 2)."""


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``None`` means "the recipe's default", resolved by :meth:`resolve`."""

    recipe: str = "tweets-bow"
    precision: Precision = "32-true"
    compile: bool = False
    strategy: Strategy = "single"
    device: Device = "auto"
    # an int, or "auto" for the doubling batch-size search
    batch_size: int | Literal["auto"] | None = None
    epochs: int | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    weight_decay: float = 0.0
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    # steps at the start of the run that are trained but excluded from timing figures
    # (None: the recipe's choice, else 5)
    warmup_steps: int | None = None
    # learning-rate schedule and its warm-up steps (None: the recipe's choice, else linear, 5% warm-up)
    lr_schedule: Literal["linear", "cosine", "constant"] | None = None
    lr_warmup_steps: int | None = None
    seed: int = 0
    # learning rate x (global batch / lr_reference_batch) (linear) or its square root (sqrt); the
    # reference is the batch the learning rate was tuned at (None: the recipe's batch_size)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_reference_batch: int | None = None
    # device mesh of tp / pp / fsdp+tp as `dp:2,tp:2` (None: tp inside a node, dp across nodes)
    mesh: str | None = None
    # pipeline schedule of strategy pp; its micro-batches are the grad_accum micro-batches
    pp_schedule: Literal["gpipe", "1f1b"] = "gpipe"
    # tp and fsdp+tp: run the norms and dropout of the recipe's plan on sequence shards (sequence
    # parallelism); false keeps them replicated (ampflow.engine.tensor_parallel)
    sequence_parallel: bool = False
    # distributed strategies: optimizer steps after warm-up profiled for comm_time_share, and left out
    # of the throughput figures (0: not measured; ampflow.engine.comms)
    comm_profile_steps: int = 2
    # write a checkpoint every N optimizer steps (0: only at the end)
    checkpoint_every: int = 0
    # full: one gathered file; sharded: every rank writes its own shards with torch.distributed.checkpoint;
    # auto: sharded under fsdp, tp, fsdp+tp and pp, full otherwise (ampflow.engine.state)
    checkpoint_format: Literal["auto", "full", "sharded"] = "auto"
    # abort after this many consecutive non-finite losses (fp16 overflow storms, divergence)
    max_nonfinite_steps: int = 10
    # 16-true diverges on many models: it must be asked for twice
    allow_16_true: bool = False
    # "auto" batch search: CPU memory budget (bytes) and the throughput gain below which it stops
    auto_batch_max: int = 4096
    auto_batch_memory_budget: int = 8 * 1024**3
    auto_batch_plateau: float = 0.05
    eval_batch_size: int = 256
    # MFU's denominator, FLOP/s of one device: a number (for this run's compute dtype) or per dtype,
    # "bf16:9.895e14,fp32:6.7e13" (None: the vendor table, else a measured matmul peak)
    peak_flops: float | str | None = None
    # cap the number of training examples used (0: all); handy for tiny test runs
    limit_train_samples: int = 0
    # token recipes: pad each batch to its longest sequence rounded up to a bucket length, with a
    # length-grouped seeded order ("bucket"), or every batch to the split's width ("max");
    # None: the recipe's choice (fixed padding when it has none)
    pad_to: Literal["bucket", "max"] | None = None
    # the train split copied to the device once ("memory"), read batch by batch from disk through a
    # DataLoader ("stream"), or "auto": stream when it would take over half the free memory
    data_loading: Literal["auto", "memory", "stream"] = "auto"
    # DataLoader worker processes of the stream path (0: read in the training process)
    data_workers: int = 2
    log_every: int = 10
    # validate on the prepared `val` split every N optimizer steps and after the last one (0: never).
    # Off by default: validation lengthens every run (its time is excluded from the figures, not from
    # the wall clock) and time to target needs a target only the user knows
    val_every: int = 0
    # validation accuracy (fraction in (0, 1]) whose first reach gives time_to_target_s and
    # steps_to_target (needs val_every); stop_at_target ends the run there
    target_accuracy: float | None = None
    stop_at_target: bool = False
    # price of one device for one hour (any currency; none: no cost figures)
    price_per_device_hour: float | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown configuration key {unknown[0]!r}; known keys: {', '.join(cls.field_names())}"
            )
        return cls(**{k: _coerce(k, v) for k, v in data.items()})

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (strings coerced by the field's type).

        Only the changed fields and the rules that tie fields together are checked: the others were
        checked when this config was built, so a run validates each value once. Raises ConfigError.
        """
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown configuration key {unknown[0]!r}; known keys: {', '.join(self.field_names())}"
            )
        coerced = {k: _coerce(k, v) for k, v in changes.items()}
        new = object.__new__(RunConfig)
        for name in self.field_names():
            object.__setattr__(new, name, coerced.get(name, getattr(self, name)))
        _validate(new, only=set(coerced))
        return new

    def with_overrides(self, pairs: list[str] | None) -> RunConfig:
        """Apply CLI-style ``key=value`` strings (values parsed by the field's type)."""
        return self.replace(**parse_overrides(pairs))

    def resolve(
        self, defaults: dict[str, Any], explicit: set[str] | frozenset[str] = frozenset()
    ) -> RunConfig:
        """Fill ``None`` fields from a recipe's defaults (only fields still unset), then from ampflow's.

        ``explicit``: the keys the user set (``--set``, ``--precision`` ...). An explicit value, ``None``
        included (``--set max_steps=none``: no step cap), is never replaced by a default. An explicit
        ``epochs`` without an explicit ``max_steps`` replaces the recipe's default step cap, so
        ``--set epochs=2`` trains two epochs (see :meth:`total_steps` for both given).
        After this, ``batch_size`` (an int or ``"auto"``), ``learning_rate`` and ``warmup_steps`` are set.
        """
        skip = set(explicit)
        if "epochs" in skip:
            skip.add("max_steps")
        changes = {
            k: v
            for k, v in defaults.items()
            if k in self.field_names() and k not in skip and getattr(self, k) is None
        }
        fallbacks = {
            "warmup_steps": _DEFAULT_TIMING_WARMUP,
            "batch_size": DEFAULT_BATCH_SIZE,
            "learning_rate": DEFAULT_LEARNING_RATE,
        }
        for name, value in fallbacks.items():
            if getattr(self, name) is None and changes.get(name) is None:
                changes[name] = value
        if (
            self.lr_scaling != "none"
            and self.lr_reference_batch is None
            and "lr_reference_batch" not in changes
        ):
            # the batch the learning rate was tuned at: the recipe's own batch size (x 1 accumulation)
            ref = defaults.get("batch_size")
            changes["lr_reference_batch"] = ref if isinstance(ref, int) else DEFAULT_BATCH_SIZE
        return self.replace(**changes) if changes else self

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run.

        ``max_steps`` alone: that many; ``epochs`` alone: ``epochs x steps_per_epoch``; both: whichever
        ends first (the smaller); neither: ``DEFAULT_EPOCHS`` epochs.
        """
        by_epochs = (self.epochs or DEFAULT_EPOCHS) * steps_per_epoch
        if self.max_steps is None:
            return by_epochs
        return min(self.max_steps, by_epochs) if self.epochs is not None else self.max_steps

    def lr_plan(self, total_steps: int) -> tuple[str, int]:
        """``(schedule, warm-up steps)`` of the learning rate over ``total_steps`` optimizer steps.

        ``lr_schedule`` defaults to linear; ``lr_warmup_steps`` to 5% of the run (at least 1), and is
        capped at ``total_steps``.
        """
        warm = self.lr_warmup_steps
        if warm is None:
            warm = max(1, total_steps // DEFAULT_LR_WARMUP_DIVISOR)
        return self.lr_schedule or DEFAULT_LR_SCHEDULE, int(min(warm, total_steps))

    @property
    def sharded_checkpoints(self) -> bool:
        """Whether checkpoints are written as per-rank DCP shards (``ampflow.engine.state``):
        ``checkpoint_format`` ``sharded``, or ``auto`` under a strategy whose ranks hold different
        parameters (fsdp, tp, fsdp+tp, pp); otherwise one gathered file."""
        fmt = self.checkpoint_format
        return fmt == "sharded" or (fmt == "auto" and self.strategy in SHARDED_CHECKPOINT_STRATEGIES)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def overrides_schema() -> dict[str, Any]:
    """A JSON Schema (draft 7) for an object of ``--set`` overrides, generated from :class:`RunConfig`.

    Every field is a property with its type (``int``, ``number``, ``boolean``, ``string`` enums for
    the Literal fields, ``null`` where the field may be unset) and unknown keys are refused, so an
    Airflow trigger form or a KFP parameter check refuses ``{"max_stepz": 5}`` before any task runs.
    ``recipe`` is left out: a sweep or DAG names it on its own. Value ranges stay
    :func:`_validate`'s, run when the config is built.
    """
    import typing

    hints = typing.get_type_hints(RunConfig)
    props: dict[str, Any] = {}
    for name in RunConfig.field_names():
        if name == "recipe":
            continue
        props[name] = _json_type(hints[name])
    return {"type": "object", "properties": props, "additionalProperties": False}


# what an unset (None) field means where it is not the recipe's choice
_NONE_DEFAULT_WORDS = {"peak_flops": "table|probe"}

# one line per --set key for `ampflow train --help` (README.md explains each at length); a test checks
# that every RunConfig field but `recipe` has one
SETTING_HELP = {
    "precision": "precision mode (Lightning's names); also --precision",
    "compile": "torch.compile the model; compile time reported apart (compile_s)",
    "strategy": "single, ddp, fsdp, tp, pp or fsdp+tp; also --strategy",
    "device": "auto picks CUDA when there is one",
    "batch_size": "global batch per optimizer micro-step; auto: doubling search for the fastest that fits",
    "epochs": "passes over the train split (with max_steps: whichever ends first)",
    "max_steps": "optimizer steps to train (none: one epoch unless epochs says otherwise)",
    "learning_rate": "peak learning rate of AdamW",
    "weight_decay": "AdamW's decoupled weight decay",
    "grad_accum": "micro-batches per optimizer step (pp: the pipeline's micro-batches)",
    "clip_grad_norm": "clip the global gradient 2-norm to this (none: no clipping)",
    "warmup_steps": "leading steps trained but left out of the timing figures",
    "lr_schedule": "linear, cosine or constant decay after the learning-rate warm-up",
    "lr_warmup_steps": "learning-rate warm-up steps (none: 5% of the run)",
    "seed": "seed of initialization, data order and dropout",
    "lr_scaling": "none, linear or sqrt: scale the learning rate with the global batch",
    "lr_reference_batch": "the global batch learning_rate was tuned at (none: the recipe's batch_size)",
    "mesh": "device mesh of tp, pp, fsdp+tp, e.g. dp:2,tp:2 (none: the strategy's default)",
    "pp_schedule": "pipeline schedule of pp: gpipe or 1f1b",
    "sequence_parallel": "tp, fsdp+tp: norms and dropout on sequence shards",
    "comm_profile_steps": "steps profiled for comm_time_share after warm-up (0: not measured)",
    "checkpoint_every": "write a checkpoint every N optimizer steps (0: only at the end)",
    "checkpoint_format": "full: one gathered file; sharded: per-rank DCP shards; auto: sharded for fsdp, tp, fsdp+tp, pp",
    "max_nonfinite_steps": "abort after this many non-finite losses in a row",
    "allow_16_true": "16-true diverges on many models: set true to ask for it anyway",
    "auto_batch_max": "batch_size=auto: largest size tried",
    "auto_batch_memory_budget": "batch_size=auto on CPU: resident-memory budget in bytes",
    "auto_batch_plateau": "batch_size=auto: stop when doubling gains less than this share of samples/s",
    "eval_batch_size": "batch size of validation and evaluate",
    "peak_flops": "MFU's peak FLOP/s per device: a number, or per dtype bf16:9.9e14,fp32:...",
    "limit_train_samples": "use only the first N training examples (0: all)",
    "pad_to": "token recipes: bucket (pad to the batch's bucket length) or max (full width)",
    "data_loading": "memory (whole split on the device), stream (read from disk), auto",
    "data_workers": "DataLoader worker processes when streaming",
    "log_every": "a progress line every N steps (a bar on a terminal)",
    "val_every": "validate on the val split every N steps and after the last (0: never)",
    "target_accuracy": "val accuracy whose first reach gives time_to_target_s",
    "stop_at_target": "end the run at the first validation reaching target_accuracy",
    "price_per_device_hour": "price of one device-hour, for cost figures (none: no cost)",
}


def set_keys_help() -> str:
    """The ``--set`` keys as a help table: name, type, default (``recipe`` when the recipe decides).

    Generated from :class:`RunConfig`, so ``ampflow train --help`` cannot drift from what is accepted.
    """
    import typing

    hints = typing.get_type_hints(RunConfig)
    rows = []
    for f in dataclasses.fields(RunConfig):
        if f.name == "recipe":
            continue
        default = (
            _NONE_DEFAULT_WORDS.get(f.name, "recipe")
            if f.default is None
            else f.default
            if isinstance(f.default, str)
            else json.dumps(f.default)
        )
        rows.append((f.name, _type_words(hints[f.name]), default))
    width = max(len(r[0]) for r in rows)
    kind_width = max(len(r[1]) for r in rows)
    lines = []
    for n, k, d in rows:
        lines.append(f"  {n:<{width}}  {k:<{kind_width}}  {d}")
        lines.append(f"  {'':<{width}}    {SETTING_HELP.get(n, '')}".rstrip())
    return "--set keys (KEY=VALUE; `none` unsets), type, default, what it does:\n" + "\n".join(lines)


def _type_words(tp: Any) -> str:
    schema = _json_type(tp)
    parts = schema.get("anyOf", [schema])
    words = [("|".join(map(str, p["enum"])) if "enum" in p else p["type"]) for p in parts]
    return " or ".join(w.replace("null", "none") for w in words)


def _json_type(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation: unions become ``anyOf``, Literals ``enum``."""
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_json_type(arg) for arg in typing.get_args(tp)]}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` as ``{field: typed value}``. Raises ConfigError for a malformed pair, an
    unknown key, a bad value, or ``recipe`` (the recipe is ``--recipe``: it also chose the prepared data,
    and a ``--set recipe`` that differed from it failed deep inside training)."""
    out: dict[str, Any] = {}
    names = [n for n in RunConfig.field_names() if n != "recipe"]
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        if key == "recipe":
            raise ConfigError("--set recipe=...: the recipe is given by --recipe, not --set")
        if key not in names:
            raise ConfigError(f"unknown --set key {key!r}; known keys: {', '.join(names)}")
        out[key] = _coerce(key, value.strip())
    return out


# -- validation ---------------------------------------------------------------------------------

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}
_RECIPE_RE = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _coerce(key: str, value: Any) -> Any:
    """Turn strings from the CLI, KFP or Airflow into the field's type; leave typed values alone."""
    if not isinstance(value, str):
        return value
    if value.lower() in {"none", "null", ""} and key not in {
        "recipe",
        "precision",
        "strategy",
        "device",
        "lr_scaling",
    }:
        return None
    kind = str(_FIELD_TYPES[key])
    if key == "batch_size":
        return value if value == "auto" else _as_int(key, value)
    if key == "peak_flops":  # a number, or per-dtype "bf16:9.9e14,fp32:6.7e13" (checked by _validate)
        try:
            return float(value)
        except ValueError:
            return value
    if "bool" in kind:
        low = value.lower()
        if low in _BOOL_TRUE:
            return True
        if low in _BOOL_FALSE:
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if "float" in kind:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if "int" in kind:
        return _as_int(key, value)
    return value


def _as_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None


def _check_literal(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _validate(c: RunConfig, only: set[str] | None = None) -> None:
    """Check every field (``only`` None) or just the fields named in ``only``; raises ConfigError.

    The rule that ties two fields together (16-true needs allow_16_true) runs when either is checked.
    """

    def checks(name: str) -> bool:
        return only is None or name in only

    if checks("recipe") and (not isinstance(c.recipe, str) or not _RECIPE_RE.match(c.recipe)):
        raise ConfigError(f"recipe must be a recipe name or module:function, got {c.recipe!r}")
    for name, allowed in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("device", DEVICES)):
        if checks(name):
            _check_literal(name, getattr(c, name), allowed)
    if (checks("precision") or checks("allow_16_true")) and c.precision == "16-true" and not c.allow_16_true:
        raise ConfigError(
            "precision 16-true keeps weights in fp16 and diverges on many models; "
            "use 16-mixed, or confirm with --set allow_16_true=true"
        )
    if checks("batch_size") and c.batch_size is not None and c.batch_size != "auto":
        if isinstance(c.batch_size, bool) or not isinstance(c.batch_size, int) or c.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer or 'auto', got {c.batch_size!r}")
    for name in ("epochs", "max_steps"):
        v = getattr(c, name)
        if checks(name) and v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    lr = c.learning_rate
    if checks("learning_rate") and lr is not None and not (isinstance(lr, int | float) and lr > 0):
        raise ConfigError(f"learning_rate must be a positive number, got {c.learning_rate!r}")
    if checks("clip_grad_norm") and c.clip_grad_norm is not None and not c.clip_grad_norm > 0:
        raise ConfigError(f"clip_grad_norm must be positive or none, got {c.clip_grad_norm!r}")
    positive = ("grad_accum", "max_nonfinite_steps", "auto_batch_max", "eval_batch_size", "log_every")
    for name in filter(checks, positive):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if checks("lr_schedule") and c.lr_schedule is not None:
        _check_literal("lr_schedule", c.lr_schedule, LR_SCHEDULES)
    if checks("pad_to") and c.pad_to is not None:
        _check_literal("pad_to", c.pad_to, PAD_TO)
    if checks("data_loading"):
        _check_literal("data_loading", c.data_loading, DATA_LOADING)
    if checks("data_workers") and (
        not isinstance(c.data_workers, int) or isinstance(c.data_workers, bool) or c.data_workers < 0
    ):
        raise ConfigError(f"data_workers must be a non-negative integer, got {c.data_workers!r}")
    if checks("lr_scaling"):
        _check_literal("lr_scaling", c.lr_scaling, LR_SCALING_RULES)
    if checks("pp_schedule"):
        _check_literal("pp_schedule", c.pp_schedule, PP_SCHEDULES)
    if checks("checkpoint_format"):
        _check_literal("checkpoint_format", c.checkpoint_format, CHECKPOINT_FORMATS)
    ref = c.lr_reference_batch
    if (
        checks("lr_reference_batch")
        and ref is not None
        and (isinstance(ref, bool) or not isinstance(ref, int) or ref < 1)
    ):
        raise ConfigError(f"lr_reference_batch must be a positive integer or none, got {ref!r}")
    if checks("mesh") and c.mesh is not None:
        parse_mesh(c.mesh)
    non_negative = (
        "warmup_steps",
        "lr_warmup_steps",
        "seed",
        "checkpoint_every",
        "limit_train_samples",
        "comm_profile_steps",
    )
    for name in filter(checks, non_negative):
        v = getattr(c, name)
        if v is None and name in ("warmup_steps", "lr_warmup_steps"):
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
    if checks("weight_decay") and c.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {c.weight_decay!r}")
    if checks("auto_batch_plateau") and not 0 <= c.auto_batch_plateau < 1:
        raise ConfigError(f"auto_batch_plateau must be in [0, 1), got {c.auto_batch_plateau!r}")
    if checks("peak_flops"):
        parse_peak_flops(c.peak_flops)
    _validate_target(c, checks)


def parse_peak_flops(value: Any) -> dict[str, float]:
    """The ``peak_flops`` setting as ``{dtype: FLOP/s}``; a bare number applies to any dtype (``"*"``).

    ``9.895e14`` -> ``{"*": 9.895e14}``; ``"bf16:9.895e14,fp32:6.7e13"`` -> per dtype (dtypes from
    :data:`PEAK_DTYPES`); None -> ``{}``. Raises ConfigError naming the field on anything else.
    """
    if value is None:
        return {}
    allowed = f"a positive number or dtype:number pairs with dtypes {', '.join(PEAK_DTYPES)}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (value > 0 and value != float("inf")):
            raise ConfigError(f"peak_flops must be {allowed}; got {value!r}")
        return {"*": float(value)}
    if not isinstance(value, str):
        raise ConfigError(f"peak_flops must be {allowed}; got {value!r}")
    out: dict[str, float] = {}
    for item in (s.strip() for s in value.split(",")):
        dtype, sep, number = item.partition(":")
        try:
            flops = float(number)
        except ValueError:
            flops = -1.0
        if not sep or dtype.strip() not in PEAK_DTYPES or not 0 < flops < float("inf"):
            raise ConfigError(f"peak_flops must be {allowed}; got {value!r}")
        out[dtype.strip()] = flops
    return out


def _validate_target(c: RunConfig, checks: Any) -> None:
    """val_every, target_accuracy, stop_at_target and price_per_device_hour, and the rules tying them."""
    v = c.val_every
    if checks("val_every") and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
        raise ConfigError(f"val_every must be a non-negative integer (0: no validation), got {v!r}")
    t = c.target_accuracy
    if checks("target_accuracy") and t is not None:
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 1:
            raise ConfigError(f"target_accuracy must be a fraction in (0, 1] or none, got {t!r}")
    if (checks("target_accuracy") or checks("val_every")) and t is not None and not c.val_every:
        raise ConfigError(
            f"target_accuracy={t} needs validation: set val_every to a number of steps (e.g. val_every=50)"
        )
    if (checks("stop_at_target") or checks("target_accuracy")) and c.stop_at_target and t is None:
        raise ConfigError("stop_at_target=true needs a target_accuracy (and val_every)")
    price = c.price_per_device_hour
    if checks("price_per_device_hour") and price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float) or not price >= 0:
            raise ConfigError(f"price_per_device_hour must be a number >= 0 or none, got {price!r}")


def parse_mesh(text: str) -> dict[str, int]:
    """``dp:2,tp:2`` as ``{"dp": 2, "tp": 2}`` (outermost dimension first, as given).

    Raises ConfigError on a name outside :data:`MESH_DIMS`, a repeated name or a size below 1.
    Whether the sizes fit the world size and the strategy is checked by ``ampflow.engine.mesh``.
    """
    dims: dict[str, int] = {}
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        name, sep, size = part.partition(":")
        name = name.strip()
        if not sep or name not in MESH_DIMS or name in dims or not size.strip().isdigit() or int(size) < 1:
            raise ConfigError(
                f"mesh must be NAME:SIZE pairs with names {', '.join(MESH_DIMS)} (e.g. dp:2,tp:2); got {text!r}"
            )
        dims[name] = int(size)
    if not dims:
        raise ConfigError(f"mesh must name at least one dimension (e.g. tp:2); got {text!r}")
    return dims


def parse_list(name: str, text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """Parse ``a,b,c`` lists from the CLI (``--precisions``), checking each item.

    Raises ConfigError when the list is empty or an item is not in ``allowed``.
    """
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{name} must list at least one value")
    if allowed is not None:
        for item in items:
            _check_literal(name, item, allowed)
    return items


# -- sweeps -------------------------------------------------------------------------------------

# The words a sweep's compile dimension may be spelled with, on the CLI, in KFP and in Airflow.
COMPILE_WORDS: dict[str, bool] = {
    "off": False,
    "on": True,
    "false": False,
    "true": True,
    "0": False,
    "1": True,
}

# evaluate takes the trained run's configuration; only these keys may differ (batching, placement)
EVAL_MAY_CHANGE: tuple[str, ...] = ("eval_batch_size", "device")


def config_id(precision: str | None, compile: bool | None, strategy: str | None = None) -> str:
    """The name of one configuration: ``bf16-mixed``, ``bf16-mixed-compiled``, ``32-true-ddp``.

    The one spelling used for run directories, MLflow's ``ampflow.config_id`` tag, KFP model metadata
    and report rows. ``strategy`` ``single`` (or None) adds nothing.
    """
    cid = f"{precision}{'-compiled' if compile else ''}"
    if strategy and strategy != "single":
        cid += f"-{strategy}"
    return cid


def _compile_mode(word: Any) -> bool:
    if isinstance(word, bool):
        return word
    low = str(word).strip().lower()
    if low not in COMPILE_WORDS:
        raise ConfigError(f"compile must be off, on or off,on; got {word!r}")
    return COMPILE_WORDS[low]


@dataclass(frozen=True)
class SweepEntry:
    """One configuration of a benchmark sweep; ``id`` names its run directory and MLflow child run."""

    precision: str
    compile: bool
    repeat: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    strategy: str = "single"

    @property
    def config_id(self) -> str:
        return config_id(self.precision, self.compile, self.strategy)

    @property
    def id(self) -> str:
        """``config_id``, suffixed ``-r<N>`` from the second repeat on (``bf16-mixed-r1``)."""
        return f"{self.config_id}-r{self.repeat}" if self.repeat else self.config_id

    @property
    def distributed(self) -> bool:
        """Whether the entry trains in several processes (every strategy but ``single``)."""
        return self.strategy != "single"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form a KFP ParallelFor item or an Airflow mapped task carries (``strategy``
        only when it is not ``single``; the sweep_plan component and the benchmark DAG route those to torchrun
        or a TrainJob/PyTorchJob)."""
        item = {"id": self.id, "precision": self.precision, "compile": self.compile, "repeat": self.repeat}
        if self.distributed:
            item["strategy"] = self.strategy
        return item


@dataclass(frozen=True)
class SweepSpec:
    """A benchmark sweep: precisions x compile modes x strategies, each trained ``repeats`` times.

    The one description of a sweep that ``ampflow bench``, the KFP benchmark pipeline and the Airflow
    benchmark DAG all parse into; :meth:`entries` is the order every one of them runs in. Validation
    happens on construction and raises ConfigError naming the field:

        >>> SweepSpec.from_words("32-true,bf16-mixed", "off,on", repeats=2).entries()[1].id
        '32-true-compiled'
        >>> [e.id for e in SweepSpec.from_words("32-true,bf16-mixed", strategies="single,ddp").entries()]
        ['32-true', '32-true-ddp', 'bf16-mixed', 'bf16-mixed-ddp']

    The baseline is a precision; with several strategies its configuration is the uncompiled run of
    the first strategy listed (``single`` first compares every layout against one process).
    """

    precisions: tuple[str, ...]
    compile_modes: tuple[bool, ...] = (False,)
    repeats: int = 1
    baseline: str = BASELINE_PRECISION
    strategies: tuple[str, ...] = ("single",)

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ConfigError("precisions must list at least one value")
        for p in self.precisions:
            _check_literal("precision", p, PRECISIONS)
        if len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(f"precisions lists a precision twice: {', '.join(self.precisions)}")
        if not self.compile_modes:
            raise ConfigError("compile must list at least one value (off, on)")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"repeats must be a positive integer, got {self.repeats!r}")
        if self.baseline not in self.precisions:
            raise ConfigError(
                f"baseline {self.baseline!r} is not in precisions ({', '.join(self.precisions)})"
            )
        if not self.strategies:
            raise ConfigError(f"strategies must list at least one of {', '.join(STRATEGIES)}")
        for s in self.strategies:
            _check_literal("strategy", s, STRATEGIES)
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies lists a strategy twice: {', '.join(self.strategies)}")

    @classmethod
    def from_words(
        cls,
        precisions: str,
        compile: str = "off",
        repeats: int = 1,
        baseline: str = BASELINE_PRECISION,
        strategies: str = "single",
    ) -> SweepSpec:
        """From the CLI's comma-separated words: ``--precisions 32-true,bf16-mixed --compile off,on
        --strategies single,ddp``."""
        return cls.from_lists(
            parse_list("precision", precisions),
            parse_list("compile", compile),
            repeats,
            baseline,
            parse_list("strategy", strategies),
        )

    @classmethod
    def from_lists(
        cls,
        precisions: list[str] | tuple[str, ...],
        compile_modes: list[Any] | tuple[Any, ...] = ("off",),
        repeats: int = 1,
        baseline: str = BASELINE_PRECISION,
        strategies: list[str] | tuple[str, ...] = ("single",),
    ) -> SweepSpec:
        """From lists, as a KFP pipeline parameter or an Airflow Param carries them.

        ``compile_modes`` items are booleans or any of :data:`COMPILE_WORDS`; duplicates collapse.
        ``strategies`` items are :data:`STRATEGIES` names (a name listed twice is refused).
        """
        modes = tuple(dict.fromkeys(_compile_mode(w) for w in compile_modes))
        reps = _as_int("repeats", repeats) if isinstance(repeats, str) else repeats
        return cls(
            tuple(str(p).strip() for p in precisions),
            modes,
            reps,
            baseline,
            tuple(str(s).strip() for s in strategies),
        )

    @property
    def compile_words(self) -> list[str]:
        """The compile dimension as ``off``/``on`` words (the CLI's and the DAG's spelling)."""
        return ["on" if c else "off" for c in self.compile_modes]

    @property
    def distributed(self) -> bool:
        """Whether any configuration trains in several processes (a strategy other than ``single``)."""
        return any(s != "single" for s in self.strategies)

    def entries(self) -> list[SweepEntry]:
        """The sweep's configurations in a fixed order; repeats interleave so drift hits every config.

        Repeat, then precision, then compile mode, then strategy (innermost): the layouts of one
        precision train back to back, and a single-strategy sweep keeps the order it always had.
        """
        return [
            SweepEntry(precision=p, compile=c, repeat=r, strategy=s)
            for r in range(self.repeats)
            for p in self.precisions
            for c in self.compile_modes
            for s in self.strategies
        ]

"""Comparability: which runs may be compared at all, and which of them are repeats of one configuration.

Owns the rule the README's "Compare" section states. A comparison varies only its *compared
dimensions*: precision, compile and strategy (:data:`COMPARED_DIMENSIONS`), and the batch size when
every run chose it with ``batch_size=auto`` (the search's answer is part of what the precision buys).
Everything else must be equal across the runs: every resolved setting of the run (result.json's
``config``, or the run's params in MLflow), the recipe, the dataset's content hash and the device
(:data:`RUN_FIELDS`). Two exceptions, each for a stated reason:

- :data:`REPEAT_FIELDS` (the seed): repeats of one configuration differ only there; it is noise, not
  a setting under test;
- :data:`BOOKKEEPING_FIELDS`: settings that cannot change what a finished run trained or measured.

A difference anywhere else is refused (:class:`~ampflow.config.ConfigError`, exit 2) naming the field
and two runs' values, unless a person allows that field (``ampflow compare --allow-mismatch FIELD``);
an allowed field then splits the configurations (two learning rates are two rows, never two "repeats")
and is listed in the report's header.

Pure: records in (:mod:`ampflow.compare.records`), decisions out; standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ampflow.config import ConfigError, RunConfig

# the settings a comparison is about: they may differ between configurations
COMPARED_DIMENSIONS = ("precision", "compile", "strategy")
# repeats of one configuration differ here only (the seed is noise, not a setting under test)
REPEAT_FIELDS = ("seed",)
# settings that cannot change what a finished run trained or measured, so they may differ freely:
# how often progress is logged, how often a checkpoint is written (its time is excluded from the
# timed window), the flag that lets 16-true be asked for, and the abort threshold for non-finite
# losses (a run that finished never reached it), and the peak FLOP/s MFU is reported against
BOOKKEEPING_FIELDS = (
    "log_every",
    "checkpoint_every",
    "checkpoint_format",
    "allow_16_true",
    "max_nonfinite_steps",
    "peak_flops",
)
# a record's own fields that must match too: what was trained, on which data, on which device
RUN_FIELDS = ("recipe", "dataset_hash", "device_name")


def setting_value(value: Any) -> str | None:
    """A setting as the text both sources agree on (MLflow params are strings): bools ``true``/``false``,
    dicts and lists as sorted JSON, None and ``"auto"`` (not resolved) as None, the rest ``str``."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    return str(value)


def settings_of(config: dict[str, Any], *, device: str | None = None) -> dict[str, str]:
    """A run's settings (:func:`setting_value` of each RunConfig field that is set) from a config dict
    or MLflow params; ``device``, when given, replaces the configured one (``auto`` resolved)."""
    names = set(RunConfig.field_names())
    out = {k: v for k, v in ((k, setting_value(v)) for k, v in config.items() if k in names) if v is not None}
    if device:
        out["device"] = device
    return out


def allowed_fields() -> tuple[str, ...]:
    """The field names ``--allow-mismatch`` accepts: the run fields and every RunConfig setting that is
    neither a compared dimension nor free to differ."""
    free = set(COMPARED_DIMENSIONS) | set(REPEAT_FIELDS) | set(BOOKKEEPING_FIELDS)
    return RUN_FIELDS + tuple(f for f in RunConfig.field_names() if f not in free)


def batch_size_compared(records: list[dict[str, Any]]) -> bool:
    """Whether the batch size is a compared dimension: every run chose it with ``batch_size=auto``."""
    return bool(records) and all(r.get("batch_auto") for r in records)


def checked_fields(records: list[dict[str, Any]]) -> list[str]:
    """The fields that must be equal across ``records``: :data:`RUN_FIELDS`, then every setting any
    record has, less the compared dimensions, the repeat and bookkeeping fields (and ``batch_size``
    when :func:`batch_size_compared`)."""
    free = set(COMPARED_DIMENSIONS) | set(REPEAT_FIELDS) | set(BOOKKEEPING_FIELDS)
    if batch_size_compared(records):
        free.add("batch_size")
    seen: dict[str, None] = {}
    for r in records:
        for k in r.get("settings") or {}:
            if k not in free and k not in RUN_FIELDS:
                seen.setdefault(k, None)
    return list(RUN_FIELDS) + sorted(seen)


def field_value(record: dict[str, Any], field: str) -> str | None:
    """One record's value of a checked field (None when it does not have it)."""
    if field in RUN_FIELDS:
        value = record.get(field)
        return None if value is None else str(value)
    return (record.get("settings") or {}).get(field)


def differences(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checked fields whose values differ across ``records``, in :func:`checked_fields` order.

    Each: ``{"field": str, "values": [distinct values, first-seen order], "runs": [the name of the
    first run with each value]}``. A record without any settings (a record built by hand) is compared
    on :data:`RUN_FIELDS` only; a setting missing from one run that has settings counts as a value (None).
    """
    out = []
    for field in checked_fields(records):
        pool = records if field in RUN_FIELDS else [r for r in records if r.get("settings")]
        values: dict[str | None, str] = {}
        for r in pool:
            values.setdefault(
                field_value(r, field), str(r.get("name") or r.get("run_dir") or r.get("run_id"))
            )
        if len(values) > 1:
            out.append({"field": field, "values": list(values), "runs": list(values.values())})
    return out


def parse_allowed(words: Iterable[str] | str | None) -> tuple[str, ...]:
    """``--allow-mismatch`` as field names (comma-separated text or a list); ConfigError naming the
    allowed values for an unknown one."""
    if words is None:
        return ()
    if isinstance(words, str):
        words = words.split(",")
    names = tuple(w.strip() for w in words if w and w.strip())
    allowed = allowed_fields()
    for name in names:
        if name not in allowed:
            raise ConfigError(
                f"--allow-mismatch {name!r}: not a field that must match; one of {', '.join(allowed)}"
            )
    return names


def check_comparable(records: list[dict[str, Any]], allow: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The allowed differences among ``records`` (:func:`differences`' shape); refuses any other.

    Raises :class:`ConfigError` (exit 2) on the first difference in a field not in ``allow``, naming
    the field, two runs and their values, and how to compare anyway.
    """
    allow = set(allow)
    found = differences(records)
    for d in found:
        if d["field"] not in allow:
            (a, b), (va, vb) = d["runs"][:2], d["values"][:2]
            raise ConfigError(
                f"compare: runs {a} and {b} are not comparable: {d['field']} differs ({va} vs {vb}); "
                f"only {', '.join(COMPARED_DIMENSIONS)} may differ (compare anyway with "
                f"--allow-mismatch {d['field']})"
            )
    return found


def split_key(record: dict[str, Any], fields: Iterable[str]) -> str:
    """The suffix an allowed difference adds to a configuration's id: ``[learning_rate=0.002]``;
    values longer than 12 characters (dataset hashes) are cut to 12. Empty without fields."""
    parts = []
    for f in fields:
        v = field_value(record, f)
        parts.append(f"{f}={(v or 'none')[:12]}")
    return f"[{','.join(parts)}]" if parts else ""

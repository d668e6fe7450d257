"""Time to target, energy and cost per configuration: what a comparison adds beside samples/s.

A sweep run with ``val_every`` and ``target_accuracy`` (:mod:`ampflow.engine.validation`) reports per run
``time_to_target_s`` (the training clock to the first validation at or above the target; validation
and checkpoint time excluded) and ``steps_to_target``, both null when the run never reached the target.
This module turns them into each configuration's row (:func:`add_time_to_target`):

- ``figures.time_to_target_s`` / ``steps_to_target`` are medians over the repeats that reached the
  target (``figures[...]["n"]`` of them); ``time_to_target.reached`` says how many of the repeats did;
- ``time_to_target.speedup`` is the baseline's median time to target over this configuration's, and
  only when every repeat of both reached it: a median over the runs that happened to get there would
  flatter a configuration that mostly did not. Otherwise None, and ``note`` says plainly why.

It informs; it decides nothing: the recommendation stays :mod:`ampflow.compare.verdict`'s (accuracy
on the test split, speed in samples/s), since no evidence rule yet says how many repeats make a time
to target trustworthy. Energy (``joules_per_sample``) and cost (``cost_per_1k_samples``,
``cost_to_target``, ``cost_per_run``) come straight from the runs' result.json figures
(:mod:`ampflow.engine.energy`); :func:`energy_note` says why energy is missing when no run has it.

Pure: rows and records in, rows out; standard library only.
"""

from __future__ import annotations

from typing import Any

from ampflow.compare.verdict import median_of


def _target(records: list[dict[str, Any]]) -> float | None:
    return next((r["target_accuracy"] for r in records if r.get("target_accuracy") is not None), None)


def target_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's ``target_accuracy`` (fraction or None) and ``val_every`` (steps or None) of the
    runs (comparability makes them equal; the first one set is taken)."""
    every = next((r.get("val_every") for r in records if r.get("val_every")), None)
    return {"target_accuracy": _target(records), "val_every": every}


def _row_target(group: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    members = group["members"]
    target = _target(members)
    n = len(members)
    if target is None:
        return {"reached": None, "of": n, "speedup": None, "note": "no target_accuracy set"}
    reached = sum(1 for m in members if m["metrics"].get("time_to_target_s") is not None)
    base_reached = sum(1 for m in base["members"] if m["metrics"].get("time_to_target_s") is not None)
    best = [m["metrics"].get("final_val_accuracy") for m in members]
    best = [b for b in best if b is not None]
    last = f" (last val accuracy {max(best):.4f})" if best else ""
    if reached == 0:
        note = f"never reached the target {target:g}{last}"
    elif reached < n:
        note = f"reached the target {target:g} in only {reached} of {n} runs (its time-to-target figures are of those)"
    else:
        note = f"reached the target {target:g} in {f'all {n} runs' if n > 1 else 'its run'}"
    speedup = None
    if group["config_id"] == base["config_id"] or reached < n:
        pass  # the baseline has no speedup over itself; a partial reach is said in the note already
    elif base_reached == len(base["members"]):
        mine, ref = (
            median_of(group["figures"], "time_to_target_s"),
            median_of(base["figures"], "time_to_target_s"),
        )
        speedup = round(ref / mine, 4) if mine else None
    else:
        note += f"; no time-to-target speedup: the baseline {base['config_id']} did not reach the target in every run"
    return {"reached": reached, "of": n, "speedup": speedup, "note": note}


def add_time_to_target(
    configs: list[dict[str, Any]], groups: dict[str, dict[str, Any]], baseline: str
) -> None:
    """Add ``time_to_target`` ``{reached, of, speedup, note}`` and ``val_curve`` (the first repeat's
    ``[[step, train_clock_s, val_accuracy], ...]``) to each row of ``configs`` (in place).

    ``groups``: :func:`ampflow.compare.verdict.group_by_config` of the same records, keyed like the
    rows' ``config_id``; ``baseline``: the baseline's config id. A configuration whose runs set no
    ``target_accuracy`` gets ``reached`` None. ``speedup`` is baseline time / this time (> 1: faster to the
    target), None for the baseline row and unless every repeat of both reached the target."""
    base = groups[baseline]
    for row in configs:
        group = groups[row["config_id"]]
        row["time_to_target"] = _row_target(group, base)
        row["val_curve"] = group["members"][0].get("val_curve") or []


def energy_note(records: list[dict[str, Any]]) -> str | None:
    """Why no run has an energy figure (the first run's stated reason), or None when some run has one
    or none says why."""
    if any(r["metrics"].get("joules_per_sample") is not None for r in records):
        return None
    return next((str(r["energy_reason"]) for r in records if r.get("energy_reason")), None)

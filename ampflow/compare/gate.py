"""The champion gate: whether a comparison summary lets a candidate go on to ``ampflow register``.

Pure (no torch, no mlflow): the Airflow retrain DAG's ``passes`` task and the KFP compare component
call it. The retrain gate has two halves: this one, on the comparison, and ``register``'s own
champion-against-challenger decision. This half counts only real evidence:

- the **regression check**: the candidate's configuration against earlier sweeps (``bench``, KFP and
  Airflow runs alike record theirs) of the recipe on the same hardware; a regression stops it;
- the **verdict**, only when the comparison has more than one configuration: a single run "compared"
  with itself as baseline proves nothing, so its verdict is never a reason to pass.

With neither (the first run of a recipe and configuration on this hardware) nothing here can vouch
for the candidate and nothing speaks against it: the gate passes it on to ``register``, saying so, and
the champion decision rests on register's comparison on the same data. Every decision says what was
checked (:attr:`GateDecision.checks`).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class GateDecision(NamedTuple):
    """``passes``; ``why``, one sentence; ``checks``, one line per piece of evidence looked at."""

    passes: bool
    why: str
    checks: list[str]


def gate_decision(summary: Any) -> GateDecision:
    """Decide on a comparison summary (``ampflow.compare/1``); see the module docstring for the rules."""
    if not isinstance(summary, dict):
        return GateDecision(False, "no comparison summary", ["comparison: none"])
    configs = summary.get("configs") or []
    candidate = summary.get("recommended")
    earlier = [s for s in summary.get("regression_baseline") or [] if s]
    regressions = summary.get("regressions") or []
    if regressions:
        checks = [f"regression: {len(regressions)} found against {len(earlier)} earlier sweep(s)"]
        checks += [str(r.get("message", r)) if isinstance(r, dict) else str(r) for r in regressions]
        return GateDecision(False, f"regression against earlier runs: {regressions}", checks)
    if not candidate:
        why = "no configuration passed the accuracy tolerance"
        return GateDecision(False, why, [f"verdict: {summary.get('recommendation') or why}"])

    checks: list[str] = []
    evidence = False
    if len(configs) > 1:
        checks.append(
            f"verdict: {candidate} against the baseline {summary.get('baseline')} ({len(configs)} configurations)"
        )
        evidence = True
    else:
        checks.append(f"verdict: not evidence ({candidate} is the only configuration: compared with itself)")
    if candidate in (summary.get("regression_checked") or []):
        checks.append(f"regression: none for {candidate} against {len(earlier)} earlier sweep(s)")
        evidence = True
    elif earlier:
        checks.append(
            f"regression: {candidate} is in none of the {len(earlier)} earlier sweep(s) on this hardware"
        )
    else:
        checks.append(f"regression: no earlier comparable run on hardware {summary.get('hardware') or '?'}")

    if evidence:
        return GateDecision(True, f"{candidate}: " + "; ".join(checks), checks)
    if earlier:
        # earlier runs of the recipe exist but none of this configuration: nothing vouches for it
        why = (
            f"no evidence for {candidate}: the only configuration, and in none of the {len(earlier)} earlier "
            "sweep(s) on this hardware; this run is recorded, so the next one is checked against it"
        )
        return GateDecision(False, why, checks)
    why = (
        f"{candidate}: first run of the recipe on this hardware, nothing earlier to check against; the "
        "champion decision rests on register's comparison with the current champion"
    )
    return GateDecision(True, why, checks)


def champion_gate(summary: Any) -> tuple[bool, str]:
    """``(passes, why)`` of :func:`gate_decision` (the form the DAG and the component print)."""
    decision = gate_decision(summary)
    return decision.passes, decision.why

"""The statistics every decision shares: the accuracy delta's rounding, the tolerance rule, the paired test.

Owns one rounding rule for accuracy deltas (``compare`` and ``register`` apply the same one, so a
boundary case cannot pass one and fail the other) and McNemar's exact test for two classifiers scored
on the same test examples. Pure: numbers in, numbers out; scipy is imported inside the test.

Sources: McNemar, "Note on the sampling error of the difference between correlated proportions or
percentages", Psychometrika 12 (1947); the exact (binomial) form as in Dietterich, "Approximate
Statistical Tests for Comparing Supervised Classification Learning Algorithms", Neural Computation 10
(1998): under H0 the discordant pairs split Binomial(b + c, 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Accuracy deltas are rounded to this many decimals of a percentage point before any comparison:
# fine enough that one test example of a million-example split still counts (1e-4 pp), coarse enough
# that float noise such as (0.795 - 0.800) * 100 == -0.5000000000000004 lands on -0.5.
DELTA_DECIMALS = 9
# two-sided significance level of the paired test
ALPHA = 0.05


def accuracy_delta_pp(accuracy: float, reference: float) -> float:
    """``accuracy - reference`` in percentage points (both fractions in [0, 1]), rounded by the one rule."""
    return round((accuracy - reference) * 100.0, DELTA_DECIMALS)


def within_tolerance(delta_pp: float, tolerance_pp: float) -> bool:
    """True when a delta (from :func:`accuracy_delta_pp`) is at most ``tolerance_pp`` points below zero.

    Exactly at the tolerance passes: ``within_tolerance(-0.5, 0.5)`` is True.
    """
    return delta_pp >= -round(tolerance_pp, DELTA_DECIMALS)


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of a candidate against a reference on the same ``n`` examples.

    ``only_reference``: examples only the reference got right (b); ``only_candidate``: only the
    candidate got right (c); ``p_value``: two-sided exact p-value; ``min_detectable_pp``: the smallest
    accuracy difference (percentage points) this many examples can show significant at ``alpha``.
    """

    n: int
    only_reference: int
    only_candidate: int
    p_value: float
    alpha: float
    min_detectable_pp: float

    @property
    def significantly_worse(self) -> bool:
        """The candidate loses significantly: more examples only the reference got right, p < alpha."""
        return self.only_reference > self.only_candidate and self.p_value < self.alpha

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "test": "mcnemar-exact",
            "n": self.n,
            "only_reference": self.only_reference,
            "only_candidate": self.only_candidate,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "min_detectable_pp": self.min_detectable_pp,
            "significantly_worse": self.significantly_worse,
        }


def min_discordant(alpha: float = ALPHA) -> int:
    """The fewest discordant pairs, all one way, that McNemar's exact test calls significant.

    All k pairs one way gives p = 2 * 0.5**k; the smallest k with p < alpha (6 at alpha 0.05).
    """
    return math.floor(math.log2(2.0 / alpha)) + 1


def min_detectable_pp(n: int, alpha: float = ALPHA) -> float:
    """The smallest accuracy difference (pp) ``n`` paired examples can show significant; inf when n=0."""
    if n <= 0:
        return math.inf
    return round(100.0 * min_discordant(alpha) / n, 4)


def mcnemar(
    reference_correct: Sequence[bool], candidate_correct: Sequence[bool], alpha: float = ALPHA
) -> PairedTest:
    """McNemar's exact test on per-example correctness of two models over the same examples, in order.

    Raises ValueError when the two sequences differ in length (not the same test examples).
    """
    if len(reference_correct) != len(candidate_correct):
        raise ValueError(
            f"paired test needs the same examples: {len(reference_correct)} against {len(candidate_correct)}"
        )
    b = sum(1 for r, c in zip(reference_correct, candidate_correct, strict=True) if r and not c)
    c = sum(1 for r, c in zip(reference_correct, candidate_correct, strict=True) if c and not r)
    if b + c == 0:
        p = 1.0
    else:
        from scipy.stats import binomtest

        p = float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)
    n = len(reference_correct)
    return PairedTest(n, b, c, min(p, 1.0), alpha, min_detectable_pp(n, alpha))


def accuracy_verdict(
    delta_pp: float | None, tolerance_pp: float, paired: PairedTest | None
) -> tuple[str, str]:
    """``(verdict, reason)`` on accuracy parity of a candidate with its reference.

    - ``unknown``: no accuracy figure for one side (nothing can be decided);
    - ``fail``: significantly worse by the paired test, or, without a paired test, more than
      ``tolerance_pp`` below;
    - ``inconclusive``: more than the tolerance below, but the paired test cannot tell the two apart
      (the split is too small to detect the difference);
    - ``pass``: within the tolerance and not significantly worse.
    """
    if delta_pp is None:
        return "unknown", "no accuracy figure to compare (not evaluated)"
    within = within_tolerance(delta_pp, tolerance_pp)
    if paired is None:
        if within:
            return (
                "pass",
                f"accuracy {delta_pp:+.2f} pp, not more than {tolerance_pp} pp below (no paired test: no per-example results)",
            )
        return (
            "fail",
            f"accuracy {delta_pp:+.2f} pp, more than {tolerance_pp} pp below (no paired test: no per-example results)",
        )
    test = f"McNemar p={paired.p_value:.3g} on {paired.n} examples, detectable >= {paired.min_detectable_pp:.2f} pp"
    if paired.significantly_worse:
        return "fail", f"accuracy {delta_pp:+.2f} pp, significantly worse ({test})"
    if not within:
        return (
            "inconclusive",
            f"accuracy {delta_pp:+.2f} pp, beyond {tolerance_pp} pp but not significant ({test})",
        )
    return (
        "pass",
        f"accuracy {delta_pp:+.2f} pp, not more than {tolerance_pp} pp below and not significantly worse ({test})",
    )

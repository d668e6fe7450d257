"""The shared decision statistics, pinned with literal values on both sides of every boundary."""

from __future__ import annotations

import math

import pytest

from ampflow.compare.stats import (
    accuracy_delta_pp,
    accuracy_verdict,
    mcnemar,
    min_detectable_pp,
    min_discordant,
    within_tolerance,
)


def test_delta_rounding_puts_float_noise_on_the_boundary():
    # (0.795 - 0.800) * 100 is -0.5000000000000004 in floats: the one rule makes it -0.5
    assert (0.795 - 0.800) * 100 != -0.5
    assert accuracy_delta_pp(0.795, 0.800) == -0.5
    assert accuracy_delta_pp(0.81, 0.80) == 1.0


@pytest.mark.parametrize(
    ("delta", "tolerance", "expected"),
    [
        (-0.5, 0.5, True),  # exactly at the tolerance
        (-0.500000001, 0.5, False),  # one unit of the rounding rule past it
        (-0.499999999, 0.5, True),
        (0.0, 0.0, True),
        (-0.000000001, 0.0, False),
        (2.0, 0.5, True),
    ],
)
def test_tolerance_boundary(delta, tolerance, expected):
    assert within_tolerance(delta, tolerance) is expected


def test_mcnemar_exact_counts_and_p_values():
    # 6 examples only the reference got right, none the other way: p = 2 * 0.5**6 = 0.03125
    ref = [True] * 6 + [True] * 10 + [False] * 4
    cand = [False] * 6 + [True] * 10 + [False] * 4
    t = mcnemar(ref, cand)
    assert (t.n, t.only_reference, t.only_candidate) == (20, 6, 0)
    assert t.p_value == pytest.approx(0.03125)
    assert t.significantly_worse is True
    # 5 one way: p = 0.0625, not significant at 0.05
    t5 = mcnemar([True] * 5 + [True] * 10, [False] * 5 + [True] * 10)
    assert t5.p_value == pytest.approx(0.0625)
    assert t5.significantly_worse is False
    # the candidate better: never "significantly worse", whatever the p-value
    better = mcnemar([False] * 8, [True] * 8)
    assert better.p_value == pytest.approx(2 * 0.5**8)
    assert better.significantly_worse is False
    # identical predictions: p = 1
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError, match="same examples"):
        mcnemar([True], [True, False])


def test_smallest_detectable_difference():
    assert min_discordant(0.05) == 6
    assert min_discordant(0.01) == 8
    assert min_detectable_pp(1000) == 0.6
    assert min_detectable_pp(120) == 5.0
    assert min_detectable_pp(0) == math.inf


def test_accuracy_verdict_each_branch():
    worse = mcnemar([True] * 6, [False] * 6)
    unsure = mcnemar([True] * 3 + [True] * 3, [False] * 3 + [True] * 3)
    assert accuracy_verdict(None, 0.5, None)[0] == "unknown"
    assert accuracy_verdict(-0.5, 0.5, None)[0] == "pass"
    assert accuracy_verdict(-0.500000001, 0.5, None)[0] == "fail"
    assert accuracy_verdict(-50.0, 0.5, unsure)[0] == "inconclusive"
    assert accuracy_verdict(-0.4, 0.5, worse)[0] == "fail"
    assert accuracy_verdict(-0.4, 0.5, unsure)[0] == "pass"
    verdict, reason = accuracy_verdict(-50.0, 0.5, unsure)
    assert "not significant" in reason and "detectable >= 100.00 pp" in reason

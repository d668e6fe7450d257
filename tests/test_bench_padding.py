"""The padding benchmark's accuracy verdict over seeds (pure: no training)."""

from ampflow.compare.stats import PairedTest
from benchmarks.bench_padding import accuracy_verdict


def paired(only_fixed: int, only_bucket: int, p: float) -> PairedTest:
    return PairedTest(3724, only_fixed, only_bucket, p, 0.05, 1.0)


def test_one_seeds_difference_is_not_called_a_property_of_bucketing():
    # the 2026-11-30 run: one seed, bucketing 110 against 76 discordant examples, p = 0.015
    assert (
        accuracy_verdict([paired(76, 110, 0.015)])
        == "bucketing significantly better in every one of 1 seed(s)"
    )
    mixed = accuracy_verdict([paired(76, 110, 0.015), paired(104, 71, 0.015), paired(90, 92, 0.94)])
    assert mixed.startswith(
        "the seeds disagree (1 significantly better, 1 significantly worse, 1 equal of 3)"
    )
    assert accuracy_verdict([paired(90, 92, 0.94), paired(80, 95, 0.29)]).startswith("equal")
    assert accuracy_verdict([paired(120, 70, 0.001), paired(118, 80, 0.008)]).startswith(
        "bucketing significantly worse in every one of 2"
    )

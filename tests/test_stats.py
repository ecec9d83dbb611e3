"""Statistics for paired comparisons and rates against hand-computed values, scipy and known
bootstrap distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from fetalcmr.stats import (
    bootstrap_ci,
    finite_mean,
    mcnemar_exact,
    mean_sd,
    paired_wilcoxon,
    proportion_ci,
)

Z = 1.959963984540054  # standard normal 97.5 % quantile


def _wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    denom = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / denom
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 5), (5, 5), (3, 27)])
def test_wilson_interval_matches_formula(k: int, n: int) -> None:
    assert proportion_ci(k, n) == pytest.approx(_wilson(k, n), abs=1e-9)


def test_exact_interval_edges_and_empty() -> None:
    # Clopper-Pearson at the edges: 0/n -> [0, 1 - (a/2)^(1/n)], n/n -> [(a/2)^(1/n), 1]
    assert proportion_ci(0, 10, method="exact") == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert proportion_ci(10, 10, method="exact") == pytest.approx((0.025 ** 0.1, 1.0))
    assert all(math.isnan(v) for v in proportion_ci(0, 0))
    with pytest.raises(ValueError, match="k <= n"):
        proportion_ci(4, 3)


def test_mcnemar_exact_hand_computed() -> None:
    # 3 both correct, 1 only A, 6 only B, 2 both wrong: p = 2 * P(X <= 1 | 7, 1/2) = 2 * 8 / 128
    a = [True] * 3 + [True] * 1 + [False] * 6 + [False] * 2
    b = [True] * 3 + [False] * 1 + [True] * 6 + [False] * 2
    res = mcnemar_exact(a, b)
    assert (res.both_correct, res.only_a, res.only_b, res.both_wrong, res.n) == (3, 1, 6, 2, 12)
    assert res.p_value == pytest.approx(0.125)
    assert res.as_dict()["p_value"] == res.p_value
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no discordant pair
    assert math.isnan(mcnemar_exact([], []).p_value)
    with pytest.raises(ValueError, match="paired"):
        mcnemar_exact([True], [True, False])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=30))
def test_mcnemar_symmetric_and_a_probability(pairs: list[tuple[bool, bool]]) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    ab, ba = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert ab.p_value == pytest.approx(ba.p_value)
    assert 0.0 < ab.p_value <= 1.0
    assert ab.both_correct + ab.only_a + ab.only_b + ab.both_wrong == len(pairs)


def test_paired_wilcoxon_matches_scipy_with_ties_and_zero_differences() -> None:
    a = [0.80, 0.82, 0.85, 0.70, 0.90, 0.77, 0.88, 0.75, 0.60]
    b = [0.78, 0.83, 0.80, 0.65, 0.86, 0.70, 0.80, 0.75, 0.55]  # one zero difference, tied |differences|
    res = paired_wilcoxon(a, b)
    ref = sps.wilcoxon(a, b)
    assert res.n == 9 and res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    diff = np.subtract(a, b)
    assert res.mean_diff == pytest.approx(diff.mean()) and res.median_diff == pytest.approx(np.median(diff))
    assert (res.mean_a, res.mean_b) == (pytest.approx(np.mean(a)), pytest.approx(np.mean(b)))
    assert res.n_a_greater == int((diff > 0).sum()) == 7
    assert set(res.as_dict()) == {"n", "mean_a", "mean_b", "mean_diff", "median_diff", "n_a_greater", "statistic",
                                  "p_value", "diff_ci_low", "diff_ci_high"}
    assert res.diff_ci_low < res.mean_diff < res.diff_ci_high
    assert (res.diff_ci_low, res.diff_ci_high) == bootstrap_ci(a, b, n_boot=2000)  # the paired interval


def test_paired_wilcoxon_drops_non_finite_pairs_and_skips_untestable_cases() -> None:
    a = [0.8, 0.7, float("nan"), 0.9, 0.6]
    b = [0.7, 0.6, 0.5, float("inf"), 0.4]
    res = paired_wilcoxon(a, b)
    assert res.n == 3 and res.p_value == pytest.approx(sps.wilcoxon([0.8, 0.7, 0.6], [0.7, 0.6, 0.4]).pvalue)
    same = paired_wilcoxon([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])  # every difference 0: nothing to rank
    assert same.n == 3 and same.mean_diff == 0.0 and math.isnan(same.p_value) and math.isnan(same.statistic)
    one = paired_wilcoxon([0.9], [0.1])  # a single pair: not tested
    assert one.n == 1 and one.n_a_greater == 1 and math.isnan(one.p_value)
    empty = paired_wilcoxon([], [])
    assert empty.n == 0 and math.isnan(empty.mean_a) and math.isnan(empty.median_diff)
    with pytest.raises(ValueError, match="paired"):
        paired_wilcoxon([0.1, 0.2], [0.1])


def test_bootstrap_of_a_binary_outcome_follows_the_binomial() -> None:
    # resampled means of 10 zeros and 10 ones are Binomial(20, 1/2) / 20: its 2.5 % and 97.5 %
    # quantiles are 6/20 and 14/20 (P(X <= 5) = 0.021 < 0.025 < P(X <= 6) = 0.058, and
    # P(X <= 13) = 0.942 < 0.975 < P(X <= 14) = 0.979), far from the edges at 20 000 resamples
    x = [0.0] * 10 + [1.0] * 10
    assert bootstrap_ci(x, n_boot=20_000, seed=3) == (0.3, 0.7)
    assert sps.binom.ppf([0.025, 0.975], 20, 0.5).tolist() == [6.0, 14.0]
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)  # means 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    assert bootstrap_ci([0.7] * 5) == (pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_matches_scipy_percentile_interval() -> None:
    x = np.random.default_rng(1).normal(0.8, 0.05, 27)
    ours = bootstrap_ci(x, n_boot=20_000, seed=0)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", random_state=0).confidence_interval
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert ours == pytest.approx((ref.low, ref.high), abs=0.05 * se)  # Monte Carlo error only
    assert ours[0] < x.mean() < ours[1] and ours[1] - ours[0] == pytest.approx(2 * Z * se, rel=0.1)


def test_bootstrap_paired_difference_seed_and_missing_values() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.7, 0.9, 20), rng.uniform(0.7, 0.9, 20)
    assert bootstrap_ci(a, b, seed=5) == bootstrap_ci(a - b, seed=5)  # resampling subjects = resampling differences
    assert bootstrap_ci(a, seed=5) == bootstrap_ci(a, seed=5) != bootstrap_ci(a, seed=6)
    assert bootstrap_ci([*a, np.nan], [*b, 0.5], seed=5) == bootstrap_ci(a, b, seed=5)
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ci(a, b[:3])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(a, alpha=1.5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=40), st.integers(0, 2**16))
def test_bootstrap_interval_lies_within_the_data(values: list[float], seed: int) -> None:
    lo, hi = bootstrap_ci(values, n_boot=500, seed=seed)
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9


def test_mean_sd_rules() -> None:
    assert mean_sd([0.81, 0.83, float("nan"), 0.86], digits=3) == "0.833 (0.025)"
    assert mean_sd([1.0, float("inf"), 3.0]) == "2.00 (1.41)"  # non-finite values are left out
    assert mean_sd([30.46], digits=1) == "30.5"  # one value: no sd
    assert mean_sd([]) == mean_sd([float("nan")]) == "n/a"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=2, max_size=30), st.integers(0, 4))
def test_mean_sd_is_numpy_mean_and_sample_sd(values: list[float], digits: int) -> None:
    v = np.asarray(values)
    assert mean_sd(values, digits) == f"{v.mean():.{digits}f} ({v.std(ddof=1):.{digits}f})"


def test_finite_mean() -> None:
    assert finite_mean([1.0, float("nan"), 3.0, float("-inf")]) == 2.0
    assert math.isnan(finite_mean([])) and math.isnan(finite_mean([float("inf")]))

"""Statistics for paired comparisons and rates: Wilcoxon signed-rank, exact McNemar, proportion
confidence intervals, a bootstrap confidence interval over subjects, and "mean (sd)" formatting.

Conventions: the unit of analysis is the subject; non-finite values (NaN: nothing to score, e.g.
a label absent from both maps; inf: an undefined distance) are left out of means, and paired
inputs lose a pair when either side is non-finite.

>>> mean_sd([0.8, 0.9, 1.0])
'0.90 (0.10)'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest, wilcoxon


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def _finite_pairs(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired values: {x.size} for A vs {y.size} for B (must be paired)")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def finite_mean(values: Sequence[float] | np.ndarray) -> float:
    """Return the mean of the finite values (NaN when there are none).

    >>> finite_mean([1.0, float("nan"), 3.0, float("inf")])
    2.0
    """
    v = _finite(values)
    return float(v.mean()) if v.size else float("nan")


def mean_sd(values: Sequence[float] | np.ndarray, digits: int = 2) -> str:
    """Return the finite values as ``"mean (sd)"`` (sample sd, ``ddof=1``) with ``digits`` decimals.

    One value: the mean alone (its sd is undefined); none: ``"n/a"``.

    >>> mean_sd([0.81, 0.83, float("nan"), 0.86], digits=3)
    '0.833 (0.025)'
    >>> mean_sd([30.5], digits=1), mean_sd([])
    ('30.5', 'n/a')
    """
    v = _finite(values)
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v.mean():.{digits}f}"
    return f"{v.mean():.{digits}f} ({v.std(ddof=1):.{digits}f})"


@dataclass(frozen=True)
class PairedTest:
    """A paired Wilcoxon signed-rank test of A vs B (one pair per subject)."""

    n: int  #: pairs with both values finite
    mean_a: float
    mean_b: float
    mean_diff: float  #: mean of A − B
    median_diff: float  #: median of A − B
    n_a_greater: int  #: pairs with A > B
    statistic: float  #: scipy's W (the smaller signed-rank sum, zero differences dropped); NaN when untested
    p_value: float  #: two-sided; NaN with fewer than 2 pairs or when every difference is 0
    diff_ci_low: float = float("nan")  #: 95 % paired bootstrap interval of ``mean_diff`` (over subjects)
    diff_ci_high: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a dict."""
        return asdict(self)


def paired_wilcoxon(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Return the two-sided Wilcoxon signed-rank test of paired values ``a`` vs ``b``.

    Pairs with a non-finite value are dropped. The test is not run (statistic and p NaN) with
    fewer than 2 pairs or when all differences are exactly zero: there is nothing to rank.

    >>> t = paired_wilcoxon([0.80, 0.82, 0.85, 0.70, 0.90], [0.78, 0.83, 0.80, 0.65, 0.86])
    >>> t.n, t.n_a_greater, t.statistic, round(t.p_value, 4)
    (5, 4, 1.0, 0.125)
    """
    x, y = _finite_pairs(a, b)
    diff = x - y
    n = int(diff.size)
    stat, p = float("nan"), float("nan")
    if n >= 2 and np.any(diff != 0):
        res = wilcoxon(x, y, alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
    nan = float("nan")
    low, high = bootstrap_ci(x, y, n_boot=2000)
    return PairedTest(n=n, mean_a=float(x.mean()) if n else nan, mean_b=float(y.mean()) if n else nan,
                      mean_diff=float(diff.mean()) if n else nan, median_diff=float(np.median(diff)) if n else nan,
                      n_a_greater=int(np.count_nonzero(diff > 0)), statistic=stat, p_value=p,
                      diff_ci_low=low, diff_ci_high=high)


@dataclass(frozen=True)
class McNemarTest:
    """Paired verdicts of two methods on the same subjects (a 2×2 table) and the exact McNemar p-value."""

    n: int
    both_correct: int
    only_a: int  #: subjects correct by A only
    only_b: int  #: subjects correct by B only
    both_wrong: int
    p_value: float  #: two-sided exact; 1.0 when no pair is discordant, NaN when there are no pairs

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a dict."""
        return asdict(self)


def mcnemar_exact(a_correct: Sequence[bool] | np.ndarray, b_correct: Sequence[bool] | np.ndarray) -> McNemarTest:
    """Return the exact McNemar test of two methods' paired verdicts.

    The p-value is the two-sided exact binomial test of ``only_b`` out of ``only_a + only_b`` at
    0.5: valid at any count, and the one to use at the small counts of a test set.

    >>> mcnemar_exact([True, True, False, False], [True, True, True, True]).p_value
    0.5
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: {a.size} verdicts of A vs {b.size} of B (must be paired)")
    only_a, only_b = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    disc = only_a + only_b
    p = float(binomtest(only_b, disc, 0.5).pvalue) if disc else (1.0 if a.size else float("nan"))
    return McNemarTest(n=int(a.size), both_correct=int(np.count_nonzero(a & b)), only_a=only_a, only_b=only_b,
                       both_wrong=int(np.count_nonzero(~a & ~b)), p_value=min(p, 1.0))


def proportion_ci(k: int, n: int, alpha: float = 0.05,
                  method: Literal["wilson", "exact"] = "wilson") -> tuple[float, float]:
    """Return the two-sided ``1 − alpha`` confidence interval of the proportion ``k / n``.

    ``method`` is ``"wilson"`` (score interval) or ``"exact"`` (Clopper–Pearson); (NaN, NaN) when
    ``n`` is 0.

    >>> tuple(round(v, 3) for v in proportion_ci(8, 10))
    (0.49, 0.943)
    """
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"proportion_ci: need 0 <= k <= n, got k={k}, n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method=method)
    return float(ci.low), float(ci.high)


def bootstrap_ci(values: Sequence[float] | np.ndarray, paired_with: Sequence[float] | np.ndarray | None = None, *,
                 n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Return the percentile bootstrap ``1 − alpha`` interval of the mean over subjects.

    ``values`` holds one value per subject; with ``paired_with`` (the other method's values of the
    same subjects) the interval is of the paired mean difference ``values − paired_with``. Subjects
    are resampled with replacement ``n_boot`` times from a generator seeded with ``seed``
    (reproducible); subjects with a non-finite value are dropped. (NaN, NaN) with no subject.

    >>> bootstrap_ci([0.0, 1.0])  # resampled means 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    (0.0, 1.0)
    >>> bootstrap_ci([3.0, 5.0, 4.0], [2.0, 4.0, 3.0])  # every difference is 1
    (1.0, 1.0)
    """
    if paired_with is None:
        x = _finite(values)
    else:
        a, b = _finite_pairs(values, paired_with)
        x = a - b
    if x.size == 0:
        return float("nan"), float("nan")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    block = max(1, 2**22 // x.size)  # resamples per block: bounded memory for large cohorts
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)

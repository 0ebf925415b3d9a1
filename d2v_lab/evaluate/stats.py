"""Uncertainty of an accuracy measured on n test items: the 95% Wilson score interval (Wilson 1927; Brown,
Cai & DasGupta 2001 recommend it over the normal approximation, which fails near 0 and 1 and at small n),
from scipy. Every accuracy a verdict reports carries one."""
from __future__ import annotations

from scipy.stats import binomtest


def wilson_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson interval of an accuracy observed on ``n`` independent items. A symmetric retrieval
    score (the mean of both directions) is read as round(accuracy * n) successes of n."""
    if n < 1:
        raise ValueError(f"an interval needs at least one test item, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    ci = binomtest(round(accuracy * n), n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def call(interval: tuple[float, float], null_p95: float) -> str:
    """"yes" when the whole interval lies above the null band's 95th percentile, "no" when it lies at or
    below it, "inconclusive" when it straddles it: the test set is too small to tell."""
    low, high = interval
    if low > null_p95:
        return "yes"
    if high <= null_p95:
        return "no"
    return "inconclusive"

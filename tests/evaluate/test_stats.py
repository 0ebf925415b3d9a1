"""The accuracy interval every verdict carries, against known values, and the three-way call."""
from __future__ import annotations

import pytest

from d2v_lab.evaluate.stats import call, wilson_interval


def test_wilson_interval_known_values():
    # Brown, Cai & DasGupta (2001): x = 8 of n = 11 -> (0.4343, 0.9025); x = 0 of 10 -> (0, 0.2775)
    assert wilson_interval(8 / 11, 11) == pytest.approx((0.43435, 0.90254), abs=1e-4)
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(1.0, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    low, high = wilson_interval(0.5, 10_000)
    assert high - low == pytest.approx(2 * 1.96 * 0.005, rel=1e-3)     # large n: the normal interval


def test_wilson_interval_refuses_nonsense():
    with pytest.raises(ValueError, match="at least one test item"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\]"):
        wilson_interval(1.2, 10)


@pytest.mark.parametrize("interval,p95,expected", [
    ((0.30, 0.40), 0.25, "yes"), ((0.10, 0.20), 0.25, "no"), ((0.10, 0.25), 0.25, "no"),
    ((0.20, 0.30), 0.25, "inconclusive"),
])
def test_call_is_yes_no_or_inconclusive(interval, p95, expected):
    assert call(interval, p95) == expected

"""The accuracy interval every verdict carries, against known values, and the three-way call."""
from __future__ import annotations

import pytest

from d2v_lab.evaluate.stats import call, wilson_interval

from builders import task_result


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


@pytest.mark.parametrize("pretrained,baseline,expected", [
    (0.60, 0.50, "better"),        # 300 of 500: interval 55.6-64.2%, all above 50%
    (0.45, 0.50, "not better"),    # interval 40.7-49.4%, all below
    (0.50, 0.55, "not better"),    # interval 45.6-54.4%: at or below 55%
    (0.53, 0.50, "inconclusive"),  # interval 48.6-57.3% straddles 50%
])
def test_probe_verdict_is_the_call_of_the_pretrained_interval_against_the_baseline(pretrained, baseline, expected):
    for name, linear in (("random_init", (pretrained, baseline, 0.1)), ("raw_input", (pretrained, 0.1, baseline))):
        t = task_result(linear=linear, n_test=500)
        assert t.verdict(name) == expected
        assert t.verdict(name) == {"yes": "better", "no": "not better", "inconclusive": "inconclusive"}[
            call(wilson_interval(pretrained, 500), baseline)]


def test_probe_verdict_against_random_init_needs_a_task_that_discriminates():
    clear = dict(linear=(0.9, 0.3, 0.95), n_test=1000)
    assert task_result(supervised=0.6, **clear).verdict() == "better"          # supervised beats random by 30
    assert task_result(supervised=0.35, **clear).verdict() == "inconclusive"   # by 5: the task tells nothing
    assert task_result(supervised=None, **clear).verdict() == "better"         # not measured: the numbers decide
    assert task_result(supervised=0.35, **clear).verdict("raw_input") == "not better"

"""The benchmarks' one percentile definition (scripts/bench/stats.py): linear interpolation
between the closest ranks, numpy's default, on known inputs; empty input gives no figure."""

from __future__ import annotations

import random

import numpy as np
import pytest

from scripts.bench import stats


def test_linear_between_closest_ranks_on_known_inputs():
    values = [40, 10, 30, 20]  # sorted 10, 20, 30, 40: rank h = 3 q / 100
    assert stats.percentile(values, 0) == 10 and stats.percentile(values, 100) == 40
    assert stats.percentile(values, 50) == 25  # h = 1.5: halfway between 20 and 30
    assert stats.percentile(values, 90) == pytest.approx(37)  # h = 2.7
    assert stats.percentile(values, 99) == pytest.approx(39.7)  # h = 2.97, not the maximum
    assert stats.percentile(range(1, 101), 99) == pytest.approx(99.01)  # 1..100: h = 98.01
    assert stats.percentile([7.5], 99.9) == 7.5


def test_median_is_p50_and_agrees_with_statistics_median():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5


@pytest.mark.parametrize("n", [1, 2, 3, 10, 99, 441, 3000])
def test_same_values_as_numpy_default(n):
    rng = random.Random(n)
    values = [rng.expovariate(0.05) for _ in range(n)]
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_summary_names_its_figures_and_rounds():
    values = [1, 2, 3, 4]
    assert stats.summary(values) == {"p50": 2.5, "p90": 3.7, "p99": 3.97, "p99.9": 4.0, "max": 4.0,
                                     "mean": 2.5}
    assert stats.summary([0.1234, 0.5678], ("p50", "min", "n"), digits=3) == {"p50": 0.346, "min": 0.123,
                                                                              "n": 2}
    assert stats.summary([1, 2], ("p50",), digits=None) == {"p50": 1.5}


def test_empty_input_gives_no_figure():
    assert stats.percentile([], 99) is None and stats.median([]) is None
    assert stats.summary([], ("p50", "p99", "mean", "max", "n")) == {"p50": None, "p99": None,
                                                                     "mean": None, "max": None, "n": 0}


@pytest.mark.parametrize("bad", [-1, 100.5])
def test_percentile_outside_0_100_is_an_error(bad):
    with pytest.raises(ValueError):
        stats.percentile([1, 2], bad)


@pytest.mark.parametrize("name", ["p101", "q50", "pfoo", "median"])
def test_unknown_figure_is_an_error_even_without_values(name):
    with pytest.raises(ValueError, match="unknown figure"):
        stats.summary([], (name,))

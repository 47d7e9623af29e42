"""The analytic references as tables (values worked out by hand from the formulas)."""

from __future__ import annotations

import pytest

from simulations.analysis import serf_model_time_s, swim_expected_rounds


@pytest.mark.parametrize(
    ("n", "fraction", "expected_s"),
    [
        (100, 0.5, 0.615),  # ln(101) / 1.5 rounds of 0.2 s
        (100, 0.99, 1.228),
        (1000, 0.5, 0.921),
        (1000, 0.999, 1.843),
    ],
)
def test_serf_model(n: int, fraction: float, expected_s: float) -> None:
    assert serf_model_time_s(n, fraction) == pytest.approx(expected_s, abs=0.002)


def test_serf_model_slows_with_loss_and_refuses_one() -> None:
    assert serf_model_time_s(100, 0.99, loss=0.5) == pytest.approx(2 * 1.228, abs=0.005)
    with pytest.raises(ValueError):
        serf_model_time_s(100, 1.0)


@pytest.mark.parametrize(("n", "expected"), [(100, 4.857), (1000, 7.286), (10_000, 9.714)])
def test_swim_rounds_grow_like_log_n(n: int, expected: float) -> None:
    assert swim_expected_rounds(n) == pytest.approx(expected, abs=0.002)

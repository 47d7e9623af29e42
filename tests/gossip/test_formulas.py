"""Table tests for the SWIM/Lifeguard formulas (values checked against memberlist's)."""

from __future__ import annotations

import pytest

from meshnode.gossip.formulas import (
    push_pull_interval_s,
    retransmit_limit,
    suspicion_expected_confirmations,
    suspicion_remaining_s,
    suspicion_timeout_s,
)


@pytest.mark.parametrize(
    ("mult", "n", "interval_s", "expected_s"),
    [
        (4, 1, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (4, 50, 1.0, 6.796),
        (5, 100, 0.5, 5.0),
    ],
)
def test_suspicion_timeout(mult: int, n: int, interval_s: float, expected_s: float) -> None:
    assert suspicion_timeout_s(mult, n, interval_s) == pytest.approx(expected_s)


@pytest.mark.parametrize(
    ("mult", "n", "expected_k"),
    [(4, 1, 0), (4, 3, 0), (4, 4, 2), (4, 100, 2), (6, 5, 0), (6, 6, 4)],
)
def test_expected_confirmations(mult: int, n: int, expected_k: int) -> None:
    assert suspicion_expected_confirmations(mult, n) == expected_k


@pytest.mark.parametrize(
    ("confirmations", "k", "elapsed_s", "expected_s"),
    [
        (0, 3, 0.0, 30.0),  # no confirmation: the maximum
        (3, 3, 0.0, 2.0),  # k confirmations: the minimum
        (1, 3, 0.0, 16.0),  # log(2)/log(4) = 0.5 of the way
        (1, 3, 5.0, 11.0),
        (0, 0, 0.0, 2.0),  # k = 0: straight to the minimum
        (5, 3, 0.0, 2.0),  # never below the minimum
    ],
)
def test_suspicion_remaining(
    confirmations: int, k: int, elapsed_s: float, expected_s: float
) -> None:
    assert suspicion_remaining_s(confirmations, k, elapsed_s, 2.0, 30.0) == pytest.approx(
        expected_s
    )


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [(4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (3, 1000, 12), (4, 0, 0)],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(
    ("n", "expected_s"),
    [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0), (65, 90.0), (1000, 180.0), (10_000, 300.0)],
)
def test_push_pull_scale(n: int, expected_s: float) -> None:
    assert push_pull_interval_s(30.0, n) == pytest.approx(expected_s)

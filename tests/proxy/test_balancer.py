"""The balancer's rules as tables: two choices, ejection, panic, backoff."""

from __future__ import annotations

import random

import pytest

from meshnode.proxy import Balancer, BalancerConfig, Instance, ejection_time_s

A, B, C = Instance("10.0.0.1", 21000), Instance("10.0.0.2", 21000), Instance("10.0.0.3", 21000)


@pytest.mark.parametrize(
    ("ejections", "expected_s"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (6, 300.0), (50, 300.0)],
)
def test_ejection_time_doubles_up_to_the_maximum(ejections: int, expected_s: float) -> None:
    assert ejection_time_s(BalancerConfig(), ejections) == expected_s


def test_two_choices_prefer_the_less_loaded() -> None:
    balancer = Balancer(random.Random(0))
    for _ in range(5):
        balancer.started(A)
    # With two instances both are always drawn: the idle one always wins.
    assert all(balancer.pick([A, B], now=0.0) == B for _ in range(50))


def test_tried_instances_are_skipped_and_none_when_all_tried() -> None:
    balancer = Balancer(random.Random(1))
    assert balancer.pick([A, B], 0.0, tried={A.key}) == B
    assert balancer.pick([A, B], 0.0, tried={A.key, B.key}) is None
    assert balancer.pick([], 0.0) is None


def test_consecutive_failures_eject_until_the_time_passes_and_success_resets() -> None:
    balancer = Balancer(random.Random(2), BalancerConfig(ejection_failures=3, ejection_s=10.0))
    assert [balancer.failed(A, now=0.0) for _ in range(3)] == [False, False, True]
    assert balancer.ejected(A, 5.0) and not balancer.ejected(A, 10.0)
    assert all(balancer.pick([A, B, C], 5.0) != A for _ in range(50))
    # The next ejection lasts twice as long, unless a success came between.
    assert [balancer.failed(A, now=11.0) for _ in range(3)][-1]
    assert balancer.ejected(A, 30.0)
    balancer.succeeded(A)
    assert not balancer.ejected(A, 11.0)


def test_panic_uses_ejected_instances_when_nothing_else_is_left() -> None:
    balancer = Balancer(random.Random(3))
    for _ in range(3):
        balancer.failed(A, 0.0)
    assert balancer.pick([A], 1.0) == A


def test_forget_missing_keeps_busy_instances() -> None:
    balancer = Balancer(random.Random(4))
    balancer.started(A)
    balancer.failed(B, 0.0)
    balancer.forget_missing([C])
    assert [(i["Address"], i["Active"]) for i in balancer.snapshot(0.0)] == [("10.0.0.1", 1)]

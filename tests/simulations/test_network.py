"""The network model alone: loss, duplication, delay bounds, partitions (seeded)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from simulations.network import Network, NetworkConfig, Partition

SEED = 20261122


def net(**kw: Any) -> Network:
    return Network(NetworkConfig(**kw), random.Random(SEED), 10)


def test_delays_stay_within_bounds_and_reorder() -> None:
    n = net(delay_ms_min=0.1, delay_ms_median=0.5, delay_ms_max=5.0)
    delays = [n.packet_delays_s(0, 1)[0] for _ in range(2000)]
    assert min(delays) >= 0.0001
    assert max(delays) <= 0.005
    # Two packets sent in order arrive out of order whenever the second draws less.
    assert any(b < a for a, b in itertools.pairwise(delays))


def test_uniform_distribution() -> None:
    n = Network(
        NetworkConfig(
            delay_ms_min=1.0, delay_ms_median=1.0, delay_ms_max=2.0, delay_distribution="uniform"
        ),
        random.Random(SEED),
        2,
    )
    delays = [n.delay_s() for _ in range(500)]
    assert min(delays) >= 0.001 and max(delays) <= 0.002


def test_loss_and_duplication() -> None:
    assert net(loss=1.0).packet_delays_s(0, 1) == []
    assert net(loss=1.0).stream_delay_s(0, 1, 100) is None
    assert len(net(duplicate=1.0).packet_delays_s(0, 1)) == 2
    half = net(loss=0.5)
    lost = sum(1 for _ in range(4000) if not half.packet_delays_s(0, 1))
    assert 1800 < lost < 2200


@pytest.mark.parametrize("asymmetric", [False, True])
def test_partitions_open_and_heal(asymmetric: bool) -> None:
    n = net()
    spec = Partition(0.0, 1.0, frozenset({0, 1}), frozenset({2, 3}), asymmetric=asymmetric)
    n.open_partition(spec)
    assert n.packet_delays_s(0, 2) == []
    assert (n.packet_delays_s(2, 0) == []) is not asymmetric
    assert n.packet_delays_s(0, 1) and n.packet_delays_s(2, 3) and n.packet_delays_s(0, 5)
    # A TCP exchange needs both directions, so even a one-way cut fails it.
    assert n.stream_delay_s(2, 0, 10) is None
    n.heal_partition(spec)
    assert n.packet_delays_s(0, 2) and n.packet_delays_s(2, 0)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        NetworkConfig(loss=1.5)
    with pytest.raises(ValueError):
        NetworkConfig(delay_ms_min=2.0, delay_ms_median=1.0)

"""The per-address connection counter shared by the HTTP API, DNS and the proxies."""

from __future__ import annotations

import socket

import pytest

from meshnode.per_client import PerClientLimit, client_address


def test_admit_up_to_the_limit_per_address_and_forget_idle_addresses() -> None:
    limit = PerClientLimit(2)
    assert [limit.admit("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert limit.admit("10.0.0.2")  # another address has its own budget
    assert limit.live("10.0.0.1") == 2 and len(limit) == 2
    limit.release("10.0.0.1")
    assert limit.admit("10.0.0.1")
    for _ in range(2):
        limit.release("10.0.0.1")
    limit.release("10.0.0.2")
    assert len(limit) == 0  # nothing kept for addresses with no connection
    limit.release("10.0.0.9")  # a stray release does not go negative
    assert limit.live("10.0.0.9") == 0


def test_a_zero_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PerClientLimit(0)


def test_client_address_of_a_gone_peer() -> None:
    with socket.socket() as unconnected:
        assert client_address(unconnected) == "?"

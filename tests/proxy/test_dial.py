"""The one outbound dial (proxy/dial.py): seeded choices, an injected clock, an injected wall clock.

Every dial here is real (TCP, TLS 1.3, inbound proxies on loopback); only
time and randomness come from the test, so the decisions replay exactly.
"""

from __future__ import annotations

import random
import ssl
import time

import pytest
import trio

from meshnode.proxy import BalancerConfig, Dialer, DialError, Limits
from meshnode.proxy.testing import StaticCertSource, TestCA, echo
from meshnode.proxy.tls import ContextCache, close_tls
from tests.proxy.conftest import HOST, Pair, running_pair, serve

_DEADLINE_S = 10.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def _dialer(
    pair: Pair,
    seed: int,
    clock: FakeClock,
    *,
    wall_clock: FakeClock | None = None,
    failures: list[str] | None = None,
    balancer: BalancerConfig | None = None,
) -> Dialer:
    def failed(*, destination: str, instance: str, ejected: bool, error: BaseException) -> None:
        if failures is not None:
            failures.append(instance)

    return Dialer(
        ContextCache(StaticCertSource(pair.ca.material("web"))),
        pair.resolver,
        rng=random.Random(seed),
        on_failure=failed,
        limits=Limits(),
        balancer=balancer,
        clock=clock,
        wall_clock=time.time if wall_clock is None else wall_clock,
    )


async def _ports_picked(dialer: Dialer, count: int) -> list[int]:
    picked = []
    for _ in range(count):
        dialled = await dialer.dial("db", 5.0)
        picked.append(dialled.instance.port)
        dialled.finished()
        close_tls(dialled.tls)
    return picked


async def _echoed(tls: ssl.SSLSocket, payload: bytes) -> bytes:
    """Send `payload` on a non-blocking TLS socket and read as many bytes back."""
    tls.sendall(payload)
    got = b""
    while len(got) < len(payload):
        try:
            got += tls.recv(len(payload) - len(got))
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(tls)
    return got


async def test_one_seed_replays_every_choice(ca: TestCA) -> None:
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        app = await serve(pair.nursery, echo)
        pair.route("db", [await pair.add_db(app) for _ in range(4)])
        clock = FakeClock(50.0)
        first = await _ports_picked(_dialer(pair, 7, clock), 12)
        again = await _ports_picked(_dialer(pair, 7, clock), 12)
        other = await _ports_picked(_dialer(pair, 8, clock), 12)
        assert first == again
        assert other != first
        assert len(set(first)) > 1  # the seed spreads, not a fixed instance


async def test_the_injected_clock_decides_ejection(ca: TestCA) -> None:
    """A dead instance stays out until the fake clock, not trio's, passes its ejection time."""
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        live = await pair.add_db(await serve(pair.nursery, echo))
        dead = trio.socket.socket()  # bound, never listening: connections are refused
        await dead.bind((HOST, 0))
        dead_port = dead.getsockname()[1]
        pair.route("db", [live, dead_port])
        clock = FakeClock(100.0)
        failures: list[str] = []
        config = BalancerConfig(ejection_failures=1, ejection_s=10.0)
        dialer = _dialer(pair, 3, clock, failures=failures, balancer=config)
        for _ in range(20):  # until the seeded picks hit the dead instance once
            await _ports_picked(dialer, 1)
            if failures:
                break
        assert failures == [f"{HOST}:{dead_port}"]
        clock.now_s = 109.0  # ejected until 110 by the fake clock
        assert set(await _ports_picked(dialer, 10)) == {live.inbound_port}
        assert len(failures) == 1
        clock.now_s = 110.5
        for _ in range(20):
            await _ports_picked(dialer, 1)
            if len(failures) == 2:
                break
        assert failures == [f"{HOST}:{dead_port}"] * 2
        dead.close()


async def test_the_injected_wall_clock_checks_a_resumed_certificate(ca: TestCA) -> None:
    """The session kept by `finished` resumes; at a wall time past the leaf it is refused."""
    async with running_pair(ca, deadline_s=_DEADLINE_S) as pair:
        pair.route("db", [await pair.add_db(await serve(pair.nursery, echo))])
        wall = FakeClock(time.time())
        dialer = _dialer(pair, 1, FakeClock(0.0), wall_clock=wall)
        for _ in range(2):  # a full handshake, then a resumed one
            dialled = await dialer.dial("db", 5.0)
            assert await _echoed(dialled.tls, b"x") == b"x"  # the ticket comes first
            resumed = dialled.tls.session_reused
            dialled.finished()
            close_tls(dialled.tls)
        assert resumed
        wall.now_s += 10 * 365 * 86400.0  # long after the leaf's notAfter
        with pytest.raises(DialError, match="expired certificate"):
            await dialer.dial("db", 5.0)

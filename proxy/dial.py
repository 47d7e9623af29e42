"""The one outbound dial of the mesh, shared by sidecar upstreams and native services (connect/).

Rules that live here:

- One `Balancer` per destination, each seeded from the `random.Random`
  passed in (in order of first use), so one seed replays every choice.
- A dial: pick an instance (`Balancer.pick`), connect, TLS 1.3 handshake
  with our leaf (offering the session kept for that instance), require the
  server's SPIFFE ID to be the destination service. A connect, handshake or
  identity failure is counted by the balancer (ejection), reported to
  `on_failure` (for the caller's log) and the next untried instance is
  dialled, at most `Limits.upstream_attempts` instances within the time given.
- A failed attempt forgets the instance's session, so a bad one cannot fail
  every later dial; a dialled connection ends with `Dialled.finished`, which
  keeps its session for the next dial (tls.py) and releases the balancer's count.
- Time comes from the `clock` (monotonic: balancer decisions and the dial's
  deadline) and `wall_clock` (certificate validity) passed in; trio's own
  timers only get durations computed from them.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from .balancer import Balancer, BalancerConfig
from .limits import Limits
from .openssl import offer_session
from .pump import close_quietly, connect, handshake
from .sources import Instance, Resolver
from .tls import ContextCache, PeerError, verified_peer

__all__ = ["Clock", "DialError", "Dialer", "Dialled", "FailureHook"]

Clock = Callable[[], float]


class FailureHook(Protocol):
    """Told of each failed attempt, for the caller's log (`instance` is "address:port")."""

    def __call__(
        self, *, destination: str, instance: str, ejected: bool, error: BaseException
    ) -> None: ...


class DialError(Exception):
    """No verified connection to any instance; the text says why (one line).

    `failures` attempts failed (each was reported to `on_failure` already).
    """

    def __init__(self, reason: str, failures: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failures = failures


@dataclass(eq=False, slots=True)
class Dialled:
    """A verified TLS connection to `instance`; call `finished` once when it is over."""

    destination: str
    instance: Instance
    tls: ssl.SSLSocket
    _dialer: Dialer
    _done: bool = False

    def finished(self) -> None:
        """Keep the connection's session for the next dial and release the balancer's count."""
        if self._done:
            return
        self._done = True
        dialer = self._dialer
        dialer.contexts.remember(self.instance.key, self.tls, dialer.wall_clock())
        dialer.balancer(self.destination).finished(self.instance)


class Dialer:
    """Dials destinations for one local service (its leaf is the client certificate)."""

    def __init__(
        self,
        contexts: ContextCache,
        resolver: Resolver,
        *,
        rng: random.Random,
        on_failure: FailureHook,
        limits: Limits | None = None,
        balancer: BalancerConfig | None = None,
        clock: Clock = trio.current_time,
        wall_clock: Clock = time.time,
        check: Callable[[ssl.SSLSocket], None] | None = None,
    ) -> None:
        """`check` (a revocation check) may refuse a verified server with `PeerError`."""
        self.contexts = contexts
        self._check = check
        self.resolver = resolver
        self.limits = limits or Limits()
        self.clock = clock
        self.wall_clock = wall_clock
        self._rng = rng
        self._on_failure = on_failure
        self._balancer_config = balancer or BalancerConfig()
        self._balancers: dict[str, Balancer] = {}

    def balancer(self, destination: str) -> Balancer:
        """The destination's balancer, made (from the next seed of our rng) on first use."""
        found = self._balancers.get(destination)
        if found is None:
            seeded = random.Random(self._rng.random())
            found = self._balancers[destination] = Balancer(seeded, self._balancer_config)
        return found

    async def dial(self, destination: str, timeout_s: float) -> Dialled:
        """A verified connection to an instance of `destination` within `timeout_s`; `DialError`."""
        limits = self.limits
        clock = self.clock
        deadline_s = clock() + timeout_s
        attempt_timeout_s = limits.connect_timeout_s + limits.handshake_timeout_s
        balancer = self.balancer(destination)
        tried: set[tuple[str, int]] = set()
        errors: list[str] = []
        why = f"no healthy instance of {destination!r}"
        for _ in range(limits.upstream_attempts):
            current = self.contexts.current()
            if current is None:
                raise DialError("no certificate yet", len(errors))
            instances: Sequence[Instance] = ()
            with trio.move_on_after(max(0.0, deadline_s - clock())):
                instances = await self.resolver.instances(destination)
            now = clock()
            if now >= deadline_s:
                raise DialError(
                    f"no instance of {destination!r} reached in time ({why})", len(errors)
                )
            instance = balancer.pick(instances, now, tried)
            if instance is None:
                raise DialError(why, len(errors))
            tried.add(instance.key)
            balancer.started(instance)
            raw: socket.socket | None = None
            tls: ssl.SSLSocket | None = None
            error: BaseException | None = None
            connected = False
            try:
                with trio.move_on_after(min(deadline_s - now, attempt_timeout_s)) as timer:
                    try:
                        raw = await connect(instance.address, instance.port)
                        tls = current.client.wrap_socket(raw, do_handshake_on_connect=False)
                        session = current.session_for(instance.key)
                        if session is not None:
                            offer_session(tls, session)
                        await handshake(tls)
                        found = verified_peer(tls, current.material.trust_domain, self.wall_clock())
                        if found.service != destination:
                            raise PeerError(
                                f"server is {found.uri!r}, not the destination {destination!r}"
                            )
                        if self._check is not None:
                            self._check(tls)
                        connected = True
                    except (OSError, PeerError) as exc:
                        error = exc
            finally:
                # Also on a cancellation from outside: no socket and no balancer count leaks.
                if not connected:
                    current.sessions.pop(instance.key, None)
                    close_quietly(tls)
                    close_quietly(raw)  # never wrapped (a detached socket closes as a no-op)
                    balancer.finished(instance)
            if connected and tls is not None:
                balancer.succeeded(instance)
                return Dialled(destination, instance, tls, self)
            if timer.cancelled_caught or error is None:
                error = TimeoutError("no connection and handshake in time")
            ejected = balancer.failed(instance, clock())
            self._on_failure(
                destination=destination,
                instance=f"{instance.address}:{instance.port}",
                ejected=ejected,
                error=error,
            )
            errors.append(f"{instance.address}:{instance.port}: {error}")
            why = f"{len(errors)} instance(s) of {destination!r} failed: " + "; ".join(errors)
        raise DialError(why, len(errors))

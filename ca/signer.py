"""The signing decisions, sans-IO: rate limit, ownership, who signs, when to renew.

Rules that live here (the trio driver is `ca/service.py`):

- CSR rate limit: a token bucket of `csr_max_per_second` tokens a second,
  at most `max(1, rate)` at once (Consul's CSRMaxPerSecond).
- Ownership: node N gets a leaf for service S only when the catalog has an
  instance of S (or a proxy for S) on N.
- A sign request is refused, in this order, when the cluster has no CA, this
  node is not an elected signer, the bucket is empty, this node has no
  intermediate under the active root, or the requester does not own S.
- Who signs: the elected signers, best first, then the other eligible
  members; a node never asks itself for a root key.
- When to bootstrap: an eligible node waits `bootstrap_wait_s` times
  (its rank among the eligible names + 1) after its start.
- When to renew: a leaf at a uniformly random point between 60 % and 90 % of
  its life; a leaf under a root that is no longer active within the
  re-issue jitter; an intermediate when fewer than three leaf lives remain.

Every function takes `now` (monotonic seconds) or `now_wall_s` and, when it
draws, a `random.Random`; nothing here reads a clock or the global random.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "INTERMEDIATE_RENEW_LEAF_LIVES",
    "Refused",
    "SignCheck",
    "TokenBucket",
    "bootstrap_at",
    "intermediate_due",
    "leaf_renew_at",
    "ownership_refusal",
    "reissue_at",
    "root_key_sources",
    "sign_refusal",
]

# An intermediate is renewed when less than this many leaf lives remain.
INTERMEDIATE_RENEW_LEAF_LIVES = 3


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a signer says no: an RPC refusal code and a one-line reason."""

    code: str
    reason: str


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst`; time is an argument."""

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now

    def set_rate(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self._at)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def ownership_refusal(node: str, service: str, owners: Iterable[str]) -> Refused | None:
    """None when `node` runs `service` (or a proxy for it), else the "not_owner" refusal."""
    found = set(owners)
    if node in found:
        return None
    where = ", ".join(sorted(found)) or "no node"
    return Refused(
        "not_owner",
        f"node {node} does not own service {service[:80]!r} in the catalog (registered on {where})",
    )


@dataclass(frozen=True, slots=True)
class SignCheck:
    """What a signer knows when a CSR arrives (everything but the CSR itself)."""

    me: str
    signers: Sequence[str]
    has_ca: bool
    active_root_id: str | None
    own_root_id: str | None  # the root of this node's intermediate, None without one


def sign_refusal(
    check: SignCheck,
    bucket: TokenBucket,
    *,
    node: str,
    service: str,
    owners: Iterable[str],
    now: float,
) -> Refused | None:
    """None when this signer may sign `service` for `node` now; spends a token if elected."""
    if not check.has_ca or check.active_root_id is None:
        return Refused("no_ca", "the cluster has no CA yet")
    if check.me not in check.signers:
        return Refused("not_signer", f"{check.me} is not an elected signer")
    if not bucket.take(now):
        return Refused("rate_limited", "rate limited, retry")
    if check.own_root_id is None or check.own_root_id != check.active_root_id:
        return Refused("not_ready", f"{check.me} has no intermediate for the active root")
    return ownership_refusal(node, service, owners)


def root_key_sources(me: str, signers: Sequence[str], eligible: Iterable[str]) -> list[str]:
    """Whom to ask for a root key, in order: elected signers first, never ourselves."""
    order = [s for s in signers if s != me]
    order += [e for e in eligible if e != me and e not in order]
    return order


def bootstrap_at(started_at: float, wait_s: float, eligible: Iterable[str], me: str) -> float:
    """When `me` may make the cluster's CA: later for each eligible name sorted before it."""
    names = sorted(set(eligible) | {me})
    return started_at + wait_s * (1 + names.index(me))


def intermediate_due(
    *,
    own_root_id: str | None,
    own_not_after_s: float,
    active_root_id: str,
    leaf_ttl_s: float,
    now_wall_s: float,
) -> bool:
    """Whether this signer needs a new intermediate (none, another root, or about to expire)."""
    if own_root_id is None or own_root_id != active_root_id:
        return True
    return own_not_after_s - now_wall_s < INTERMEDIATE_RENEW_LEAF_LIVES * leaf_ttl_s


def leaf_renew_at(
    *,
    valid_after_s: float,
    valid_before_s: float,
    fraction: tuple[float, float],
    now: float,
    now_wall_s: float,
    rng: random.Random,
) -> float:
    """The monotonic time to renew a leaf: a random point of `fraction` of its life."""
    low, high = fraction
    life_s = valid_before_s - valid_after_s
    renew_wall_s = valid_after_s + life_s * rng.uniform(low, high)
    return now + max(0.0, renew_wall_s - now_wall_s)


def reissue_at(now: float, jitter_s: float, rng: random.Random) -> float:
    """The monotonic time to re-issue a leaf after a root change: within `jitter_s`."""
    return now + rng.uniform(0.0, jitter_s)

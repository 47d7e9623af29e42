"""Intentions: Consul's allow/deny rules between services, decided locally.

Rules that live here (Consul's semantics, DESIGN.md "Intentions"):
- a source or destination is a service name or `*`, and `*` is only ever the
  whole name (`db*` is rejected, not treated as a prefix);
- precedence: exact->exact 9, `*`->exact 8, exact->`*` 6, `*`->`*` 5; the
  highest precedence that matches decides, and deny wins a tie;
- with no match the default policy decides: allow, since a `* -> *` deny,
  the way to make the default deny, always matches.

The decision is a pure function of an index, so every connection is decided
from the local replica with at most four dictionary look-ups, whatever the
number of intentions. The index is updated in place, one intention at a
time, by its owner (`replica.IntentionState`) as gossip delivers them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

WILDCARD = "*"
Action = Literal["allow", "deny"]

# DNS-label-like names so that every service is also reachable as
# <name>.service.mesh; dots are allowed as Consul allows them.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})\Z")  # \Z: "$" allows a final "\n"

PRECEDENCE_EXACT_EXACT = 9
PRECEDENCE_WILDCARD_EXACT = 8
PRECEDENCE_EXACT_WILDCARD = 6
PRECEDENCE_WILDCARD_WILDCARD = 5


class IntentionError(ValueError):
    """An intention a user asked for is invalid; the message is one line."""


def validate_name(name: str, role: str) -> str:
    """Accept a service name or the whole-name wildcard; reject anything else clearly."""
    if name == WILDCARD:
        return name
    if WILDCARD in name:
        raise IntentionError(
            f"invalid {role} {name!r}: the wildcard '*' must be the whole name, "
            "prefix or suffix matching is not supported"
        )
    if not _NAME.match(name):
        raise IntentionError(
            f"invalid {role} {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 63 characters, starting with a letter or digit)"
        )
    return name


_DEFAULT_SCOPE = "default"
_SCOPES = ("partition", "namespace")
_PEER_PREFIX = "peer:"  # Consul's `peer:<peer>/<name>` form for an imported service


def plain_name(name: str, role: str) -> str:
    """A name as Consul's clients may write it, reduced to the plain service name.

    Consul's UI and Go client qualify names: ``default/web`` is namespace
    ``default``, ``default/default/web`` partition and namespace. Only the
    ``default`` ones exist here, so those prefixes are dropped; any other is
    refused rather than silently read as the default.
    """
    if name.startswith(_PEER_PREFIX):
        raise IntentionError(
            f"invalid {role} {name[:100]!r}: cluster peering ({_PEER_PREFIX}NAME/...) "
            "is not supported"
        )
    *scopes, plain = name.split("/")
    if len(scopes) > len(_SCOPES):
        raise IntentionError(
            f"invalid {role} {name[:100]!r}: use NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME"
        )
    for kind, scope in zip(_SCOPES[len(_SCOPES) - len(scopes) :], scopes, strict=True):
        if scope != _DEFAULT_SCOPE:
            raise IntentionError(
                f"invalid {role} {name[:100]!r}: {kind} {scope[:60]!r} does not exist; "
                f"meshnode has only the {_DEFAULT_SCOPE!r} {kind}"
            )
    return validate_name(plain, role)


def precedence(source: str, destination: str) -> int:
    if destination == WILDCARD:
        return PRECEDENCE_WILDCARD_WILDCARD if source == WILDCARD else PRECEDENCE_EXACT_WILDCARD
    return PRECEDENCE_WILDCARD_EXACT if source == WILDCARD else PRECEDENCE_EXACT_EXACT


@dataclass(frozen=True, slots=True)
class Intention:
    source: str
    destination: str
    action: Action
    description: str = ""

    @property
    def precedence(self) -> int:
        return precedence(self.source, self.destination)

    def __str__(self) -> str:
        return f"{self.source} => {self.destination} ({self.action})"


def make_intention(source: str, destination: str, action: str, description: str = "") -> Intention:
    """Validate user input into an Intention."""
    if action not in ("allow", "deny"):
        raise IntentionError(f"invalid action {action!r}: use 'allow' or 'deny'")
    return Intention(
        validate_name(source, "source"),
        validate_name(destination, "destination"),
        action,  # type: ignore[arg-type]
        description,
    )


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    matched: Intention | None

    @property
    def reason(self) -> str:
        """What a user sees in `/v1/agent/connect/authorize`: the rule and its precedence."""
        if self.matched is None:
            return "no intention matched; the default policy allows"
        verb = "allowed" if self.allowed else "denied"
        found = f"{verb} by intention {self.matched} with precedence {self.matched.precedence}"
        if self.matched.source == WILDCARD and self.matched.destination == WILDCARD:
            # `* => *` is how the cluster sets its default policy.
            return f"{found}, the default policy"
        return found


_DEFAULT_ALLOW = Decision(True, None)


class IntentionIndex:
    """The intentions keyed for constant-time decisions, kept current one change at a time.

    Built whole once (from a list), then `put` and `remove` update it per
    changed intention, so a gossip update costs O(1) whatever the count and a
    decision never waits for a rebuild.
    """

    __slots__ = ("_by_destination", "_by_pair", "_by_source")

    def __init__(self, intentions: Iterable[Intention] = ()) -> None:
        self._by_pair: dict[tuple[str, str], Intention] = {}
        # destination -> source -> intention, and source -> destination -> intention.
        self._by_destination: dict[str, dict[str, Intention]] = {}
        self._by_source: dict[str, dict[str, Intention]] = {}
        for ixn in intentions:
            old = self._by_pair.get((ixn.source, ixn.destination))
            # One intention per pair; if two ever collide, deny wins the tie.
            if old is None or ixn.action == "deny":
                self.put(ixn)

    def __len__(self) -> int:
        return len(self._by_pair)

    def put(self, ixn: Intention) -> None:
        """Add `ixn`, replacing the intention of the same (source, destination)."""
        self._by_pair[(ixn.source, ixn.destination)] = ixn
        self._by_destination.setdefault(ixn.destination, {})[ixn.source] = ixn
        self._by_source.setdefault(ixn.source, {})[ixn.destination] = ixn

    def remove(self, source: str, destination: str) -> Intention | None:
        """Drop the intention of (source, destination); the one removed, if any."""
        ixn = self._by_pair.pop((source, destination), None)
        if ixn is not None:
            _drop(self._by_destination, destination, source)
            _drop(self._by_source, source, destination)
        return ixn

    def get(self, source: str, destination: str) -> Intention | None:
        return self._by_pair.get((source, destination))

    def all(self) -> list[Intention]:
        """Every intention, in Consul's list order: precedence, then names."""
        return sorted(self._by_pair.values(), key=_evaluation_order)

    def decide(self, source: str, destination: str) -> Decision:
        """May `source` connect to `destination`? At most four look-ups, best precedence first."""
        pair = self._by_pair
        for key in (
            (source, destination),
            (WILDCARD, destination),
            (source, WILDCARD),
            (WILDCARD, WILDCARD),
        ):
            ixn = pair.get(key)
            if ixn is not None:
                return Decision(ixn.action == "allow", ixn)
        return _DEFAULT_ALLOW

    def match(self, by: Literal["source", "destination"], name: str) -> list[Intention]:
        """Intentions that apply to `name`, in the order they are evaluated."""
        index = self._by_source if by == "source" else self._by_destination
        found = list(index.get(name, {}).values())
        if name != WILDCARD:
            found += index.get(WILDCARD, {}).values()
        return sorted(found, key=_evaluation_order)


def _drop(index: dict[str, dict[str, Intention]], outer: str, inner: str) -> None:
    bucket = index.get(outer)
    if bucket is not None:
        bucket.pop(inner, None)
        if not bucket:
            del index[outer]


def _evaluation_order(ixn: Intention) -> tuple[int, str, str]:
    return (-ixn.precedence, ixn.source, ixn.destination)

"""Intention semantics: Consul's precedence table, validation, evaluation order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.intentions.rules import (
    Intention,
    IntentionError,
    IntentionIndex,
    make_intention,
    plain_name,
    precedence,
)


@pytest.mark.parametrize(
    ("source", "destination", "expected"),
    [("web", "db", 9), ("*", "db", 8), ("web", "*", 6), ("*", "*", 5)],
)
def test_precedence_table(source: str, destination: str, expected: int) -> None:
    assert precedence(source, destination) == expected


def ix(*rules: tuple[str, str, str]) -> IntentionIndex:
    return IntentionIndex(make_intention(s, d, a) for s, d, a in rules)


@pytest.mark.parametrize(
    ("rules", "source", "destination", "allowed", "matched"),
    [
        ((), "web", "db", True, None),
        ((("*", "*", "deny"),), "web", "db", False, ("*", "*")),
        ((("*", "*", "deny"), ("web", "db", "allow")), "web", "db", True, ("web", "db")),
        ((("*", "*", "deny"), ("web", "db", "allow")), "api", "db", False, ("*", "*")),
        ((("*", "db", "deny"), ("web", "*", "allow")), "web", "db", False, ("*", "db")),
        ((("web", "*", "deny"), ("*", "*", "allow")), "web", "db", False, ("web", "*")),
        ((("web", "socat", "deny"),), "web", "socat", False, ("web", "socat")),
        ((("web", "socat", "deny"),), "web", "db", True, None),
    ],
)
def test_decisions(
    rules: tuple[tuple[str, str, str], ...],
    source: str,
    destination: str,
    allowed: bool,
    matched: tuple[str, str] | None,
) -> None:
    d = ix(*rules).decide(source, destination)
    assert d.allowed is allowed
    assert (None if d.matched is None else (d.matched.source, d.matched.destination)) == matched


def test_reason_names_rule_and_precedence() -> None:
    d = ix(("web", "db", "deny")).decide("web", "db")
    assert d.reason == "denied by intention web => db (deny) with precedence 9"
    assert "default policy allows" in ix().decide("a", "b").reason


@pytest.mark.parametrize(
    "bad", ["db*", "*db", "d*b", "", "-db", "a" * 64, "db svc", "db/1", "db\n", "db\x00"]
)
def test_invalid_names_are_rejected_with_a_clear_message(bad: str) -> None:
    with pytest.raises(IntentionError, match="invalid source"):
        make_intention(bad, "db", "allow")


def test_invalid_action() -> None:
    with pytest.raises(IntentionError, match="use 'allow' or 'deny'"):
        make_intention("web", "db", "maybe")


def test_match_lists_in_evaluation_order() -> None:
    index = ix(
        ("*", "*", "deny"), ("web", "db", "allow"), ("*", "db", "deny"), ("api", "x", "allow")
    )
    got = [(i.source, i.destination) for i in index.match("destination", "db")]
    assert got == [("web", "db"), ("*", "db"), ("*", "*")]
    # `* => db` applies whenever web dials db, so it is part of web's list.
    got = [(i.source, i.destination) for i in index.match("source", "web")]
    assert got == [("web", "db"), ("*", "db"), ("*", "*")]


def test_deny_wins_a_tie() -> None:
    index = IntentionIndex([Intention("web", "db", "allow"), Intention("web", "db", "deny")])
    assert not index.decide("web", "db").allowed
    index = IntentionIndex([Intention("web", "db", "deny"), Intention("web", "db", "allow")])
    assert not index.decide("web", "db").allowed


names = st.sampled_from(["web", "db", "api", "*"])
rules = st.lists(st.tuples(names, names, st.sampled_from(["allow", "deny"])), max_size=12)


@given(rules, st.sampled_from(["web", "db", "api"]), st.sampled_from(["web", "db", "api"]))
def test_decision_matches_a_brute_force_reading_of_the_rules(
    rs: list[tuple[str, str, str]], source: str, destination: str
) -> None:
    index = ix(*rs)
    matching = [
        (precedence(s, d), a) for s, d, a in rs if s in (source, "*") and d in (destination, "*")
    ]
    if not matching:
        expected = True
    else:
        top = max(p for p, _ in matching)
        expected = all(a == "allow" for p, a in matching if p == top)
    assert index.decide(source, destination).allowed is expected


# Consul's forms of a name (its parseIntentionStringComponent cases): NAME,
# NAMESPACE/NAME, PARTITION/NAMESPACE/NAME, peer:PEER/NAME, at most two '/'.
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("web", "web"),
        ("*", "*"),
        ("default/web", "web"),
        ("default/*", "*"),
        ("default/default/web", "web"),
    ],
)
def test_default_namespace_and_partition_prefixes_are_dropped(given: str, expected: str) -> None:
    assert plain_name(given, "source") == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("ops/web", "namespace 'ops' does not exist"),
        ("*/web", "namespace '*' does not exist"),
        ("eu/default/web", "partition 'eu' does not exist"),
        ("default/ops/web", "namespace 'ops' does not exist"),
        ("a/b/c/web", "use NAME, NAMESPACE/NAME or PARTITION/NAMESPACE/NAME"),
        ("peer:dc2/web", "cluster peering (peer:NAME/...) is not supported"),
        ("default/db*", "the wildcard '*' must be the whole name"),
        ("default/", "invalid source ''"),
    ],
)
def test_other_namespaces_partitions_and_peers_are_refused(given: str, fragment: str) -> None:
    with pytest.raises(IntentionError) as caught:
        plain_name(given, "source")
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)

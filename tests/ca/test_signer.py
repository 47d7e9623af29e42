"""Table tests of the signing decisions (ca/signer.py): fixed seed, fake `now`."""

from __future__ import annotations

import random

import pytest

from meshnode.ca.signer import (
    Refused,
    SignCheck,
    TokenBucket,
    bootstrap_at,
    intermediate_due,
    leaf_renew_at,
    ownership_refusal,
    reissue_at,
    root_key_sources,
    sign_refusal,
)

READY = SignCheck(me="n1", signers=("n1", "n2"), has_ca=True, active_root_id="r2", own_root_id="r2")


@pytest.mark.parametrize(
    ("check", "node", "owners", "code"),
    [
        (READY, "n3", {"n3"}, None),
        (READY, "n3", {"n4"}, "not_owner"),
        (READY, "n3", set(), "not_owner"),
        (SignCheck("n1", ("n1",), False, None, None), "n3", {"n3"}, "no_ca"),
        (SignCheck("n9", ("n1", "n2"), True, "r2", "r2"), "n3", {"n3"}, "not_signer"),
        (SignCheck("n1", ("n1",), True, "r2", None), "n3", {"n3"}, "not_ready"),
        (SignCheck("n1", ("n1",), True, "r2", "r1"), "n3", {"n3"}, "not_ready"),  # old root
    ],
)
def test_sign_refusal_table(
    check: SignCheck, node: str, owners: set[str], code: str | None
) -> None:
    bucket = TokenBucket(10.0, 10.0, now=0.0)
    refused = sign_refusal(check, bucket, node=node, service="web", owners=owners, now=0.0)
    assert (None if refused is None else refused.code) == code


def test_not_owner_names_the_owners() -> None:
    refused = ownership_refusal("n3", "web", {"n2", "n1"})
    assert refused == Refused(
        "not_owner",
        "node n3 does not own service 'web' in the catalog (registered on n1, n2)",
    )
    assert ownership_refusal("n3", "web", []) is not None
    assert "registered on no node" in ownership_refusal("n3", "web", []).reason  # type: ignore[union-attr]


def test_the_rate_limit_refills_with_now_and_is_checked_before_ownership() -> None:
    bucket = TokenBucket(2.0, 2.0, now=100.0)
    codes = []
    for now in (100.0, 100.0, 100.0, 100.4, 100.5, 101.0, 101.0):
        refused = sign_refusal(READY, bucket, node="n3", service="web", owners={"x"}, now=now)
        codes.append(refused.code if refused else None)
    # Two tokens, then one every 0.5 s: a refused owner still spends a token.
    assert codes == [
        "not_owner",
        "not_owner",
        "rate_limited",
        "rate_limited",
        "not_owner",
        "not_owner",
        "rate_limited",
    ]
    bucket.set_rate(0.5)
    assert bucket.burst == 1.0


def test_a_clock_going_backwards_never_adds_tokens() -> None:
    bucket = TokenBucket(1.0, 1.0, now=50.0)
    assert bucket.take(50.0)
    assert not bucket.take(10.0)
    assert not bucket.take(10.5)


@pytest.mark.parametrize(
    ("me", "signers", "eligible", "order"),
    [
        ("n4", ["n1", "n2"], ["n1", "n2", "n3", "n4"], ["n1", "n2", "n3"]),
        ("n1", ["n1", "n2"], ["n2", "n1", "n5"], ["n2", "n5"]),
        ("n1", [], ["n1"], []),
        ("n3", ["n2"], [], ["n2"]),
    ],
)
def test_root_key_sources_table(
    me: str, signers: list[str], eligible: list[str], order: list[str]
) -> None:
    assert root_key_sources(me, signers, eligible) == order


@pytest.mark.parametrize(
    ("eligible", "me", "at"),
    [
        ([], "n1", 12.0),
        (["n1", "n2"], "n1", 12.0),
        (["n1", "n2"], "n2", 14.0),
        (["a", "b", "c"], "zz", 18.0),
    ],
)
def test_bootstrap_at_table(eligible: list[str], me: str, at: float) -> None:
    assert bootstrap_at(10.0, 2.0, eligible, me) == at


@pytest.mark.parametrize(
    ("own_root", "not_after_s", "due"),
    [
        (None, 0.0, True),
        ("r1", 10_000_000.0, True),  # under another root
        ("r2", 1_000_000.0 + 3 * 3600 - 1, True),  # fewer than three leaf lives left
        ("r2", 1_000_000.0 + 3 * 3600 + 1, False),
    ],
)
def test_intermediate_due_table(own_root: str | None, not_after_s: float, due: bool) -> None:
    assert (
        intermediate_due(
            own_root_id=own_root,
            own_not_after_s=not_after_s,
            active_root_id="r2",
            leaf_ttl_s=3600,
            now_wall_s=1_000_000.0,
        )
        is due
    )


def renew_at(rng: random.Random, now_wall_s: float = 1100.0) -> float:
    """A leaf valid over wall 1000..2000, scheduled at monotonic now=5."""
    return leaf_renew_at(
        valid_after_s=1000.0,
        valid_before_s=2000.0,
        fraction=(0.6, 0.9),
        now=5.0,
        now_wall_s=now_wall_s,
        rng=rng,
    )


def test_leaf_renewal_falls_between_60_and_90_percent_of_the_life() -> None:
    rng = random.Random(7)
    ats = [renew_at(rng) for _ in range(200)]
    # Wall 1600..1900 is monotonic 5 + 500..800.
    assert all(505.0 <= at <= 805.0 for at in ats)
    assert max(ats) - min(ats) > 200  # spread, not one instant
    assert renew_at(random.Random(7)) == ats[0]  # one seed, one schedule
    assert renew_at(rng, now_wall_s=1950.0) == 5.0  # past the window: renew now


def test_reissue_falls_within_the_jitter_window() -> None:
    rng = random.Random(3)
    ats = [reissue_at(40.0, 30.0, rng) for _ in range(100)]
    assert all(40.0 <= at <= 70.0 for at in ats)
    assert reissue_at(40.0, 0.0, rng) == 40.0

"""Issue 15, what remained after the trust anchor: root keys and forged-record load.

1. A signer used to destroy the key of any root that left its view, so a
   gossip-key holder who deleted the root records (a replicated tombstone)
   or made one untrusted ended the cluster's CA for good. A root key now
   goes only when its root is finished by the signer's own knowledge
   (`ca/custody.py`), and a current root's record is written back.
2. Every CA change re-read the whole view; the records are now decoded
   and verified once per distinct value, and skipped ones reported once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshnode.ca import BuiltinProvider
from meshnode.ca import approval as approval_module
from meshnode.ca import records as ca_records
from meshnode.ca.anchor import Anchor
from meshnode.ca.approval import SignerApproval, approval_key, encode_approval, public_der
from meshnode.ca.pem import generate_key
from meshnode.ca.records import KIND, RootRecord, decode_root, encode_root, read_view, root_key
from meshnode.ca.service import CASettings, ConfigChange
from meshnode.gossip.store import Entry, Version
from tests.ca.test_service import Mesh, csr_for
from tests.ca.test_trust_anchor import settled_mesh


def tombstone(mesh: Mesh, key: str) -> None:
    """What a gossip-key holder sends: a delete of `key` newer than anything seen."""
    version = Version(mesh.state.store.clock + 100, "rogue")
    mesh.state.merge([Entry(KIND, key, b"", version, True, mesh.clock.now_s)])


def key_file(tmp_path: Path, node: str, root_id: str) -> Path:
    return tmp_path / node / "ca" / f"root-{root_id.replace(':', '')}.key"


def stored_root(mesh: Mesh, root_id: str) -> RootRecord | None:
    entry = mesh.state.store.get(KIND, root_key(root_id))
    return None if entry is None else decode_root(entry.key, entry.value)


async def two_signers(tmp_path: Path, nursery: trio.Nursery) -> Mesh:
    """n1 and n2 approved signers holding the root key, n3 a client; 1 h leaves."""
    settings = CASettings(bootstrap_wait_s=0, leaf_ttl_s=3600)
    mesh = Mesh(tmp_path, nursery, ["n1", "n2", "n3"], {"n1", "n2"}, settings=settings)
    await mesh.start()
    mesh.clock.now_s += 3600.0  # past the first-use window: every agent has pinned
    await mesh.reconcile()
    mesh.register("n3", "web")
    return mesh


async def test_a_tombstoned_root_record_keeps_every_key_and_is_written_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await two_signers(tmp_path, nursery)
    active = mesh.active_root("n3")
    for signer in ("n1", "n2"):
        assert key_file(tmp_path, signer, active.id).exists()

    tombstone(mesh, root_key(active.id))
    assert mesh.ca["n3"].roots() is None  # the attack lands: no root in anyone's view
    await mesh.reconcile()

    for signer in ("n1", "n2"):
        assert key_file(tmp_path, signer, active.id).exists(), signer
        assert mesh.ca[signer].keystore.load(active.id) is not None
    assert stored_root(mesh, active.id) == active
    roots = mesh.ca["n3"].roots()
    assert roots is not None and roots.active_id == active.id
    restored = sum(mesh.counters[n].values.get("ca.root.restored", 0) for n in ("n1", "n2"))
    assert restored == 1  # the first signer's write; the second then sees it back
    issued = await mesh.ca["n3"].issue("web", csr_for(mesh, "web"))
    assert issued.root_id == active.id


async def test_a_root_record_made_untrusted_is_written_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    active = mesh.active_root("n2")
    # Another certificate under the real root's key name: the record no longer decodes.
    other = BuiltinProvider().generate_root("x.mesh", now=mesh.ca["n1"]._now())
    mesh.state.put(
        KIND,
        root_key(active.id),
        encode_root(RootRecord(active.id, active.cluster_id, other.cert_pem, 1, 0.0, "rogue")),
    )
    assert mesh.ca["n2"].view.active is None
    await mesh.reconcile()
    assert mesh.ca["n1"].keystore.load(active.id) is not None
    assert stored_root(mesh, active.id) == active
    view = mesh.ca["n2"].view
    assert view.active is not None and view.active.id == active.id


async def test_after_a_restart_the_signers_own_copy_brings_the_record_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    active = mesh.active_root("n1")
    pin = mesh.ca["n1"].anchors()
    assert pin == (Anchor(active.id, active.cert_pem),)
    tombstone(mesh, root_key(active.id))
    # n1 restarts before it reconciles: a new service over the same data dir and pin.
    again = Mesh(
        tmp_path,
        nursery,
        ["n1", "n2"],
        {"n1"},
        state=mesh.state,
        settings=CASettings(bootstrap_wait_s=0),
    )
    again.clock.now_s = mesh.clock.now_s
    again.ca["n1"]._pinned = pin[0]
    again.ca["n1"]._refresh()
    await again.ca["n1"].reconcile()
    assert again.ca["n1"].keystore.load(active.id) is not None
    assert stored_root(mesh, active.id) == active
    assert again.counters["n1"].values.get("ca.bootstrapped", 0) == 0  # no second CA


async def test_a_rotated_out_root_keeps_its_key_for_its_trust_period_only(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await two_signers(tmp_path, nursery)
    old = mesh.active_root("n3")
    new_id = await mesh.ca["n3"].configure(ConfigChange(rotate=True))
    await mesh.reconcile()
    # The attacker deletes the old record early (its leaves are still valid).
    tombstone(mesh, root_key(old.id))
    await mesh.reconcile()
    for signer in ("n1", "n2"):
        assert mesh.ca[signer].keystore.load(old.id) is not None, signer
        assert mesh.counters[signer].values.get("ca.root.restored", 0) == 0
    assert stored_root(mesh, old.id) is None  # superseded: not written back
    mesh.clock.now_s += 2 * 3600 - 120  # still inside 2 x leaf TTL
    await mesh.reconcile()
    assert all(mesh.ca[n].keystore.load(old.id) is not None for n in ("n1", "n2"))
    mesh.clock.now_s += 120
    await mesh.reconcile()
    for signer in ("n1", "n2"):
        assert old.id not in mesh.ca[signer].keystore.held(), signer
        assert mesh.ca[signer].keystore.load(new_id) is not None
    assert mesh.ca["n1"].counters.values["ca.root_key.dropped"] >= 1


def _forged(mesh: Mesh, count: int) -> list[tuple[str, bytes]]:
    provider, now = BuiltinProvider(), mesh.ca["n1"]._now()
    found = []
    for i in range(count):
        root = provider.generate_root(f"forged{i}.mesh", now=now)
        record = RootRecord(root.id, f"forged-{i}", root.cert_pem, 99, 0.0, "rogue")
        found.append((root_key(root.id), encode_root(record)))
    return found


async def test_a_ca_change_decodes_only_the_values_not_seen_before(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    forged = _forged(mesh, 60)
    for key, value in forged[:-1]:
        mesh.state.put(KIND, key, value)
    calls: list[str] = []
    real_decode = ca_records.decode_root

    def counting(key: str, data: bytes) -> RootRecord:
        calls.append(key)
        return real_decode(key, data)

    monkeypatch.setattr(ca_records, "decode_root", counting)
    read_view(mesh.state)
    assert calls == []  # each was decoded when the agents refreshed on its write
    mesh.state.put(KIND, *forged[-1])
    assert calls == [forged[-1][0]]  # the agents' refresh: the new value only
    view, _ = read_view(mesh.state, mesh.ca["n2"].anchors())
    assert len(view.stray_roots) == 60 and calls == [forged[-1][0]]


async def test_a_malformed_record_is_reported_once_not_on_every_change(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    before = mesh.counters["n2"].values.get("ca.malformed_records", 0)
    for i in range(20):
        mesh.state.put(KIND, f"root/{i:02x}", b"not cbor")
    for key, value in _forged(mesh, 5):
        mesh.state.put(KIND, key, value)  # five more CA changes
    assert mesh.counters["n2"].values["ca.malformed_records"] - before == 20


async def test_forged_approvals_are_verified_once_not_on_every_change(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = await settled_mesh(tmp_path, nursery)
    active = mesh.active_root("n2")
    der = public_der(generate_key().public_key())

    def forged(i: int) -> SignerApproval:
        return SignerApproval(f"rogue{i}", f"id-rogue{i}", der, active.id, "rogue", 0.0, b"x" * 70)

    for i in range(300):  # more than the 256 signature checks cached before
        mesh.state.put(KIND, approval_key(f"rogue{i}"), encode_approval(forged(i)))
    checks: list[bytes] = []
    real_check = approval_module.root_signed

    def counting(cert_pem: str, message: bytes, signature: bytes) -> bool:
        checks.append(signature)
        return real_check(cert_pem, message, signature)

    monkeypatch.setattr(approval_module, "root_signed", counting)
    mesh.state.put(KIND, approval_key("rogue300"), encode_approval(forged(300)))
    assert len(checks) == 1  # both agents' refresh: the new approval, verified once
    view = mesh.ca["n2"].view
    assert view.approval("rogue0") is None and view.approval("rogue300") is None
    assert view.approved(mesh.nodes.node("n1")) is not None  # type: ignore[arg-type]

"""Event-loop time of one CA change when a gossip-key holder has filled the CA's room.

Every change of a ``ca`` record makes each agent re-read the CA view
(`meshnode.ca.records.read_view`). A gossip-key holder can write up to
4,096 CA records (the kind's entry cap), each a well-formed root with its
own certificate, so each is a real decode: CBOR, PEM, an X.509 parse and a
SHA-256 fingerprint. The rule (STYLE.md) is that no change blocks the event
loop more than a few ms.

Measured side by side in the same process: the *anchor* is a cold read
(every record decoded and verified, as each change cost before decodes were
cached by value); the *measured* figure is a read after one more record
changed (one forged root added), with the records seen before already
decoded. Medians over `--changes` changes, for each count of forged roots.

The largest count is 4,094: with the real root and the config the CA kind
holds its 4,096 entries.

Run: .venv/bin/python bench/ca_view.py [--forged 1000 4094] [--changes 20]
     [--kinds roots approvals]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime

from meshnode.ca import BuiltinProvider
from meshnode.ca import records as ca_records
from meshnode.ca.anchor import Anchor
from meshnode.ca.approval import SignerApproval, approval_key, encode_approval, public_der
from meshnode.ca.pem import generate_key
from meshnode.ca.records import (
    CONFIG_KEY,
    KIND,
    CAConfigRecord,
    RootRecord,
    encode_config,
    encode_root,
    read_view,
    root_key,
    sign_config,
)
from meshnode.store.state import LocalState


def _forged_root(provider: BuiltinProvider, now: datetime, i: int) -> tuple[str, bytes]:
    """One well-formed root record no agent trusts: its own key, its own cluster."""
    root = provider.generate_root(f"forged{i}.mesh", now=now)
    record = RootRecord(root.id, f"forged-{i}", root.cert_pem, 99, 0.0, "rogue")
    return root_key(root.id), encode_root(record)


def _forged_approval(real_root_id: str, der: bytes, i: int) -> tuple[str, bytes]:
    """An approval naming the real root, with a signature its key never made."""
    approval = SignerApproval(
        f"rogue{i}", f"id-rogue{i}", der, real_root_id, "rogue", 0.0, os.urandom(70)
    )
    return approval_key(approval.node), encode_approval(approval)


def _cold(state: LocalState, anchors: tuple[Anchor, ...]) -> float:
    """Seconds for a read with nothing decoded before (what every change cost before)."""
    clear = getattr(ca_records, "forget_decoded", None)
    if clear is not None:
        clear()
    start = time.perf_counter()
    read_view(state, anchors)
    return time.perf_counter() - start


def _one_change(state: LocalState, anchors: tuple[Anchor, ...], key: str, value: bytes) -> float:
    """Seconds for the read that follows one more forged root written."""
    state.put(KIND, key, value)
    start = time.perf_counter()
    read_view(state, anchors)
    return time.perf_counter() - start


def measure(forged: int, changes: int, kind: str) -> tuple[float, float]:
    """(cold ms, per-change ms) medians with `forged` forged records of `kind` in the store."""
    now = datetime.now(UTC)
    provider = BuiltinProvider()
    state = LocalState("bench")
    real = provider.generate_root("real.mesh", now=now)
    record = RootRecord(real.id, "c1", real.cert_pem, 1, 0.0, "n1")
    state.put(KIND, root_key(real.id), encode_root(record))
    config = sign_config(CAConfigRecord("c1", "real.mesh"), real.id, real.key_pem)
    state.put(KIND, CONFIG_KEY, encode_config(config))
    anchors = (Anchor(real.id, real.cert_pem),)
    der = public_der(generate_key().public_key())

    def make(i: int) -> tuple[str, bytes]:
        if kind == "approvals":
            return _forged_approval(real.id, der, i)
        return _forged_root(provider, now, i)

    for i in range(forged - changes):
        state.put(KIND, *make(i))
    extra = [make(forged + i) for i in range(changes)]
    read_view(state, anchors)  # what an agent has decoded before the changes
    per_change = [_one_change(state, anchors, key, value) for key, value in extra]
    cold = [_cold(state, anchors) for _ in range(max(3, changes // 4))]
    return statistics.median(cold) * 1e3, statistics.median(per_change) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forged", type=int, nargs="+", default=[1000, 4094])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["roots", "approvals"])
    args = parser.parse_args()
    print("| forged | count | cold read (anchor) ms | one CA change ms | ratio |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        for forged in args.forged:
            cold_ms, change_ms = measure(forged, args.changes, kind)
            ratio = cold_ms / change_ms
            print(f"| {kind} | {forged} | {cold_ms:.1f} | {change_ms:.2f} | {ratio:.0f}x |")


if __name__ == "__main__":
    main()

"""The revocation list on the replicated store: writes, the live set, waits and collection.

Rules that live here:

- Each changed entry of kind ``"revocation"`` is decoded once, when it
  changes, and the `RevocationSet` is rebuilt from the decoded records (a
  few milliseconds at `MAX_ENTRIES`); a handshake only reads the current set.
- `generation` is the store's index of the kind, so a proxy can wait for
  the next change (`wait_changed`) and re-evaluate its live connections.
- Revoking the same serial again keeps the first revocation time and adds
  what the new write knows (the public key hash, the real notAfter): a
  revocation only ever grows, it is never lifted by a later write.
- `collect` deletes entries `GC_MARGIN_S` past their leaf's notAfter; every
  agent runs it, and concurrent deletes of one key merge like any write.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio
from cryptography import x509

from ..gossip.errors import LocalProtocolError
from ..gossip.store import Entry
from ..logs import get_logger, log
from ..store.state import ReplicatedState
from .revocation import (
    GC_MARGIN_S,
    KIND,
    MAX_ENTRIES,
    MalformedRevocation,
    Revocation,
    RevocationError,
    RevocationSet,
    decode_revocation,
    encode_revocation,
    expired_keys,
    serial_key,
    spki_sha256,
)

__all__ = ["RevocationReplica"]

_log = get_logger("ca")
# Expired entries are harmless (their leaves fail on dates), so collecting
# every 10 minutes is plenty and costs one pass over at most 4,096 entries.
_GC_INTERVAL_S = 600.0


class RevocationReplica:
    """The cluster's revoked leaves as this agent's replica holds them."""

    def __init__(
        self,
        state: ReplicatedState,
        *,
        wall_clock: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._state = state
        self._wall_clock = wall_clock
        self.max_entries = max_entries
        self.malformed_total = 0
        self._set = RevocationSet()
        self._records: dict[str, Revocation] = {}
        state.tracker.subscribe(KIND, self._on_change)
        self._on_change(state.store.items(KIND))

    # --- reading ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Rises on every change of the list (the store index of the kind)."""
        return self._state.tracker.topic_index(KIND)

    def current(self) -> RevocationSet:
        return self._set

    def refusal(self, serial: int, spki_sha256: bytes) -> str | None:
        """Why a leaf with this serial and key is refused, or None (the proxy's question)."""
        return self._set.refusal(serial, spki_sha256)

    async def wait_changed(self, since_generation: int, timeout_s: float) -> int:
        return await self._state.tracker.wait(KIND, since_generation, timeout_s)

    def _on_change(self, entries: list[Entry]) -> None:
        for entry in entries:
            self._apply(entry)
        self._rebuild()

    def _apply(self, entry: Entry) -> None:
        """Decode one changed entry into `_records` (only the changed ones: 4,096 take 25 ms)."""
        self._records.pop(entry.key, None)
        if entry.tombstone:
            return
        try:
            self._records[entry.key] = decode_revocation(entry.key, entry.value)
        except MalformedRevocation as exc:
            self.malformed_total += 1
            log(_log, "warning", "skipped a revocation", key=entry.key[:80], error=exc)

    def _rebuild(self) -> None:
        found = RevocationSet(self._records.values(), self.max_entries)
        if found.dropped_total:
            log(_log, "warning", "revocations over the bound ignored", count=found.dropped_total)
        self._set = found

    # --- writing ---------------------------------------------------------------------------

    def revoke(
        self,
        serial: int,
        *,
        cert: x509.Certificate | None,
        reason: str,
        unknown_not_after_s: float,
    ) -> Revocation:
        """Revoke a leaf by serial (and by key when `cert` is at hand); the stored record.

        `unknown_not_after_s`: the notAfter to assume when the certificate is
        not at hand (the longest a leaf issued now could live). Raises
        `RevocationError` on bad input, a full list, or a `cert` whose serial
        is not `serial`.
        """
        if cert is not None and cert.serial_number != serial:
            raise RevocationError(
                f"the certificate's serial is {serial_key(cert.serial_number)}, "
                f"not {serial_key(serial)}"
            )
        now_wall_s = self._wall_clock()
        new = Revocation(
            serial=serial,
            spki_sha256=b"" if cert is None else spki_sha256(cert),
            revoked_at_s=now_wall_s,
            not_after_s=unknown_not_after_s
            if cert is None
            else cert.not_valid_after_utc.timestamp(),
            reason=reason,
            revoked_by=self._state.node_name,
        )
        old = self._record(serial)
        if old is None and len(self._set) >= self.max_entries:
            raise RevocationError(
                f"the revocation list is full ({self.max_entries} entries): "
                "entries leave it when their leaves expire"
            )
        return self._write(new if old is None else _combined(old, new))

    def complete(self, cert: x509.Certificate) -> bool:
        """Add the key and real notAfter of a revoked leaf we hold; whether it was needed."""
        old = self._record(cert.serial_number)
        if old is None or old.spki_sha256:
            return False
        self._write(
            _combined(
                old,
                Revocation(
                    serial=old.serial,
                    spki_sha256=spki_sha256(cert),
                    revoked_at_s=old.revoked_at_s,
                    not_after_s=_not_after(cert),
                    reason=old.reason,
                    revoked_by=old.revoked_by,
                ),
            )
        )
        return True

    def collect(self) -> int:
        """Delete the entries of leaves long expired; how many."""
        keys = expired_keys(self._set.records, self._wall_clock(), GC_MARGIN_S)
        if keys:
            self._state.delete_many(KIND, keys)
        return len(keys)

    def _record(self, serial: int) -> Revocation | None:
        entry = self._state.store.get(KIND, serial_key(serial))
        if entry is None:
            return None
        try:
            return decode_revocation(entry.key, entry.value)
        except MalformedRevocation:
            return None  # a bad value is overwritten by a good one

    def _write(self, record: Revocation) -> Revocation:
        try:
            self._state.put(KIND, record.key, encode_revocation(record))
        except LocalProtocolError as exc:
            raise RevocationError(f"cannot store the revocation: {exc}") from None
        return record

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Collect expired entries every `_GC_INTERVAL_S` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(_GC_INTERVAL_S)
            collected = self.collect()
            if collected:
                log(_log, "info", "expired revocations collected", count=collected)


def _not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def _combined(old: Revocation, new: Revocation) -> Revocation:
    """What two revocations of one serial know together (the first time and reason win)."""
    key_known = old.spki_sha256 or new.spki_sha256
    # A known key comes with the real notAfter; two guesses keep the longer one.
    if new.spki_sha256 and not old.spki_sha256:
        not_after_s = new.not_after_s
    elif old.spki_sha256 and not new.spki_sha256:
        not_after_s = old.not_after_s
    else:
        not_after_s = max(old.not_after_s, new.not_after_s)
    return Revocation(
        serial=old.serial,
        spki_sha256=key_known,
        revoked_at_s=min(old.revoked_at_s, new.revoked_at_s),
        not_after_s=not_after_s,
        reason=old.reason or new.reason,
        revoked_by=old.revoked_by,
    )

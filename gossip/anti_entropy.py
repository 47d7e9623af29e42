"""One anti-entropy round of the replicated store, sans-IO: steps of messages in, steps out.

Rules that live here:

- A round is the exchange described in `store.py`: the initiator A sends its
  `Digest`; the responder B answers `BucketVersions` for the buckets that
  differ; A sends the entries B lacks and a `Want` for those it lacks; B merges
  and answers the wanted `Entries`. Both then hold the union of their replicas.
- A *step* is what one side sends before waiting: on a stream it is a count
  frame (uint32) and then that many framed messages (`encode_step`,
  `StepReader`), each frame sealed by the caller's `Wire`.
- The sessions never merge: they hand back the entries to merge, so the caller
  persists them as it does any other change (and decides what to relay). The
  responder answers a `Want` after merging the pushed entries, so where both
  sides sent an entry under one version, the answer is the merged winner.
- An unexpected message, or a step larger than its bounds, is a peer's
  mistake: `UnexpectedStoreMessage` (a `DecodeError`); drop the stream.
- No I/O, no clock: the caller passes `now` to `StepReader` for the envelope's
  replay window, and moves the bytes.

Used by the simulator (simulations/sim.py); the agent's
`meshnode/store/replication.py` runs the same round over trio streams.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from . import store_codec
from .errors import DecodeError
from .store import DEFAULT_LIMITS, BucketVersions, Digest, Entry, KeyVersion, Store
from .wire import FrameReader, Wire

__all__ = [
    "FRAME_MAX_BYTES",
    "STEP_BYTES_MAX",
    "STEP_FRAMES_MAX",
    "Initiator",
    "Responder",
    "StepReader",
    "UnexpectedStoreMessage",
    "encode_step",
]

_COUNT = struct.Struct(">I")
# 448 MiB of store in 8 MiB messages is 56 frames; leave room for many small ones.
STEP_FRAMES_MAX = 4096
FRAME_MAX_BYTES = store_codec.STORE_MESSAGE_MAX_BYTES + 64  # + the AES-GCM envelope
# A whole step carries at most a full store plus encoding overhead: without
# this bound, 4096 frames of 8 MiB from one peer could hold 32 GiB in memory.
STEP_BYTES_MAX = DEFAULT_LIMITS.store_max_bytes * 5 // 4


class UnexpectedStoreMessage(DecodeError):
    """A store step is malformed, too large, or holds the wrong message for its place."""


def encode_step(wire: Wire, messages: Sequence[bytes]) -> bytes:
    """One step as stream bytes: a sealed count frame, then each message sealed and framed."""
    return b"".join([wire.frame(_COUNT.pack(len(messages))), *(wire.frame(m) for m in messages)])


class StepReader:
    """Reassembles steps from stream bytes fed in any pieces; decodes their messages.

    After an error the stream is out of step or untrusted: drop it.
    """

    def __init__(
        self,
        wire: Wire,
        *,
        max_step_frames: int = STEP_FRAMES_MAX,
        max_step_bytes: int = STEP_BYTES_MAX,
    ) -> None:
        self._frames = FrameReader(wire, max_frame_bytes=FRAME_MAX_BYTES)
        self._max_step_frames = max_step_frames
        self._max_step_bytes = max_step_bytes
        self._count: int | None = None  # messages the current step still announces
        self._step: list[store_codec.StoreMessage] = []
        self._step_bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._frames.feed(data)

    def next_step(self, now: float) -> list[store_codec.StoreMessage] | None:
        """The next whole step's messages, or None until more bytes arrive."""
        while True:
            frame = self._frames.next_frame(now)
            if frame is None:
                return None
            if self._count is None:
                if len(frame) != _COUNT.size:
                    raise UnexpectedStoreMessage("a store step starts with a 4-byte count")
                (count,) = _COUNT.unpack(frame)
                if count > self._max_step_frames:
                    raise UnexpectedStoreMessage(
                        f"store step of {count} messages, limit {self._max_step_frames}"
                    )
                self._count, self._step, self._step_bytes = count, [], 0
            else:
                self._step_bytes += len(frame)
                if self._step_bytes > self._max_step_bytes:
                    raise UnexpectedStoreMessage(
                        f"store step exceeds {self._max_step_bytes} bytes; refusing the rest"
                    )
                self._step.append(store_codec.decode_store_message(frame))
            if self._count == len(self._step):
                step, self._count, self._step = self._step, None, []
                return step


def _entries_of(step: Sequence[store_codec.StoreMessage]) -> list[Entry]:
    entries: list[Entry] = []
    for msg in step:
        if not isinstance(msg, store_codec.Entries):
            raise UnexpectedStoreMessage(f"expected Entries, got {type(msg).__name__}")
        entries.extend(msg.entries)
    return entries


def _bucket_versions_of(step: Sequence[store_codec.StoreMessage]) -> BucketVersions:
    buckets: list[int] = []
    versions: list[KeyVersion] = []
    for msg in step:
        if not isinstance(msg, BucketVersions):
            raise UnexpectedStoreMessage(f"expected BucketVersions, got {type(msg).__name__}")
        buckets.extend(msg.buckets)
        versions.extend(msg.versions)
    return BucketVersions(tuple(buckets), tuple(versions))


class Initiator:
    """A's side of one round: `opening()`, `on_bucket_versions(step)`, then maybe `on_entries`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wanted: list[tuple[str, str]] | None = None

    def opening(self) -> list[bytes]:
        """Step 1: our digest."""
        return [store_codec.encode_digest(self._store.digest())]

    def on_bucket_versions(self, step: Sequence[store_codec.StoreMessage]) -> list[bytes]:
        """Step 3, from B's versions: what B lacks, and a `Want` for what we lack."""
        bv = _bucket_versions_of(step)
        store = self._store
        newer = store.entries_newer_than(bv)
        self._wanted = store.wanted(bv)
        out = store_codec.encode_entries(newer) if newer else []
        if self._wanted:
            out += store_codec.encode_want(self._wanted)
        return out

    @property
    def expects_entries(self) -> bool:
        """True when we asked for entries, so a last step from B is due."""
        return bool(self._wanted)

    def on_entries(self, step: Sequence[store_codec.StoreMessage]) -> list[Entry]:
        """Step 4 from B: the entries we asked for; the caller merges them."""
        if not self._wanted:
            raise UnexpectedStoreMessage("entries arrived though none were wanted")
        return _entries_of(step)


class Responder:
    """B's side: `on_digest(step)`, then `on_push(step)` (merge its result), then `answer()`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wanted: list[tuple[str, str]] = []

    def on_digest(self, step: Sequence[store_codec.StoreMessage]) -> list[bytes]:
        """Step 2: our versions in the buckets where A's digest differs from ours."""
        if len(step) != 1 or not isinstance(step[0], Digest):
            raise UnexpectedStoreMessage("a round starts with exactly one Digest")
        store = self._store
        return store_codec.encode_bucket_versions(
            store.bucket_versions(store.diff_request(step[0]))
        )

    def on_push(self, step: Sequence[store_codec.StoreMessage]) -> list[Entry]:
        """A's entries (for the caller to merge) and the keys it wants, kept for `answer()`."""
        entries: list[Entry] = []
        for msg in step:
            if isinstance(msg, store_codec.Entries):
                entries.extend(msg.entries)
            elif isinstance(msg, store_codec.Want):
                self._wanted.extend(msg.keys)
            else:
                raise UnexpectedStoreMessage(f"expected Entries or Want, got {type(msg).__name__}")
        return entries

    def answer(self) -> list[bytes] | None:
        """Step 4 (after merging A's entries): the wanted entries, or None when A wants none."""
        if not self._wanted:
            return None
        return store_codec.encode_entries(self._store.entries_for(self._wanted))

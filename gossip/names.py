"""The process-wide member name -> slot table that every `Membership` indexes through.

Rules that live here:
- a name has one slot in the process; each core keeps its own view of the
  member (state, incarnation, change time, address and metadata) in its own
  columns at that slot, so cores that disagree about a member share only its
  name, never what they disagree on;
- a slot is in use while some core's columns mark it (a member it knows, or
  an entry of its probe round); when the table has doubled since the last
  look, slots no core uses are freed and reused, so an agent that sees many
  short-lived names over months stays bounded;
- slot numbers are an implementation detail: a core iterates its members in
  its own insertion order, never in slot order, so what it does never depends
  on which slot a name got or on what other cores in the process did.

Why: a simulation of N nodes holds N^2 (node, member) pairs; a dict entry and
an object per pair cost ~170 bytes, columns at a shared slot ~34 (see
simulations/README.md, "Scale and speed").
"""

from __future__ import annotations

import weakref

# Below this many names the table is never swept (a sweep costs O(cores x slots)).
_SWEEP_MIN_NAMES = 1024


class NameSlots:
    """Interned member names, each with a slot index into every core's columns."""

    __slots__ = ("_free", "_sweep_at", "_users", "names", "slot_of")

    def __init__(self) -> None:
        # Read directly by `Membership` on its hot paths (one lookup an entry).
        self.slot_of: dict[str, int] = {}
        self.names: list[str | None] = []  # by slot; None: free
        self._free: list[int] = []
        # Each core's marker columns (non-zero: the slot is in use there).
        self._users: weakref.WeakKeyDictionary[object, tuple[bytearray, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._sweep_at = _SWEEP_MIN_NAMES

    def __len__(self) -> int:
        """Names in the table now."""
        return len(self.slot_of)

    @property
    def capacity(self) -> int:
        """One more than the highest slot ever handed out: the length a core's columns need."""
        return len(self.names)

    def register(self, owner: object, *markers: bytearray) -> None:
        """Count `owner`'s columns in every sweep for as long as it lives."""
        self._users[owner] = markers

    def intern(self, name: str) -> int:
        """The slot of `name`, a new or freed one if it has none."""
        slot = self.slot_of.get(name)
        if slot is not None:
            return slot
        if len(self.slot_of) >= self._sweep_at:
            self._sweep()
        return self._add(name)

    def name(self, slot: int) -> str:
        name = self.names[slot]
        assert name is not None, f"slot {slot} is free"
        return name

    def intern_many(self, names: list[str]) -> list[int]:
        """The slots of `names`, sweeping (if due) once before any is added.

        A sweep frees slots no core marks yet, so one between two interns of a
        batch could hand the first name's slot to the second.
        """
        slot_of = self.slot_of
        slots = [slot_of.get(name, -1) for name in names]
        if -1 not in slots:
            return slots
        if len(slot_of) + slots.count(-1) >= self._sweep_at:
            self._sweep()  # it may free slots just looked up: look again
            slots = [slot_of.get(name, -1) for name in names]
        for i, name in enumerate(names):
            if slots[i] == -1:
                slots[i] = self._add(name)
        return slots

    def _add(self, name: str) -> int:
        """A slot for a name the table lacks, without sweeping."""
        slot = self.slot_of.get(name)
        if slot is not None:
            return slot  # a repeat within one batch
        if self._free:
            slot = self._free.pop()
            self.names[slot] = name
        else:
            slot = len(self.names)
            self.names.append(name)
        self.slot_of[name] = slot
        return slot

    def _sweep(self) -> None:
        """Free every slot that no live core marks (amortised: the table doubled since)."""
        columns = [c for markers in self._users.values() for c in markers]
        length = max([self.capacity, *(len(c) for c in columns)])
        mask = 0
        for column in columns:
            mask |= int.from_bytes(column, "little")
        used = mask.to_bytes(length, "little")
        for slot, name in enumerate(self.names):
            if name is not None and not used[slot]:
                del self.slot_of[name]
                self.names[slot] = None
                self._free.append(slot)
        self._sweep_at = max(_SWEEP_MIN_NAMES, 2 * len(self.slot_of))


SHARED = NameSlots()
"""The table of this process: an agent runs one core, the simulator thousands."""

"""Events the membership core emits for its driver and the agent."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Addr, State


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of what this node believes about one member."""

    name: str
    addr: Addr
    meta: bytes
    incarnation: int
    state: State
    state_change_s: float  # monotonic time of the last state change


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """Metadata or address changed, or a suspect was refuted."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberFailed:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberReaped:
    name: str


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A `User` payload arrived, by broadcast or sent to us directly."""

    payload: bytes
    source: Addr


Event = MemberJoined | MemberUpdated | MemberLeft | MemberFailed | MemberReaped | UserMessage

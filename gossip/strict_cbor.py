"""Decode one CBOR item from the network the strict way: no tags, no surprises.

Values other nodes gossip (intentions, user events) hold only text, numbers,
lists and maps. Tags would build datetimes, bignums, sets or shared
references; indefinite lengths and deep nesting cost memory; trailing bytes
mean the sender and we disagree on the format. Each is refused with one
error type chosen by the caller.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, NoReturn

import cbor2

__all__ = ["load_strict"]

Refuse = Callable[[str], Exception]


class _NoTags(dict[int, Any]):
    """cbor2 looks tags up here before its built-in decoders: refuse every one."""

    def __init__(self, refuse: Refuse) -> None:
        super().__init__()
        self._refuse = refuse

    def __getitem__(self, tag: int) -> NoReturn:
        raise self._refuse(f"CBOR tag {tag} is not allowed")

    def get(self, tag: int, default: object = None) -> NoReturn:
        raise self._refuse(f"CBOR tag {tag} is not allowed")

    def __contains__(self, tag: object) -> bool:
        return True


def load_strict(data: bytes, *, max_depth: int, refuse: Refuse) -> Any:
    """One untagged, definite-length item at most `max_depth` deep, with no trailing bytes.

    Raises `refuse(reason)` (an exception the caller's drop path handles) on
    anything else, never a cbor2 error.
    """

    def reject_tag(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
        raise refuse(f"CBOR tag {tag.tag} is not allowed")

    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            stream,
            tag_hook=reject_tag,
            semantic_decoders=_NoTags(refuse),
            max_depth=max_depth,
            allow_indefinite=False,
            strict_hashable_types=True,
        ).decode()
    except Exception as exc:  # cbor2 raises several types; all of them mean bad bytes
        cause = exc.__cause__
        if cause is not None and type(cause) is type(refuse("")):
            raise cause from None  # our own refusal of a tag, wrapped by cbor2
        raise refuse(f"not CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise refuse(f"{len(data) - stream.tell()} trailing bytes")
    return item

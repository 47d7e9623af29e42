"""Big list answers built and encoded in chunks, yielding to the event loop between them.

At 100,000 services one list answer (its JSON objects, the ``?filter=`` over
them, then ``json.dumps``) is tens to hundreds of ms of pure Python; done in
one go it stalls gossip, DNS and sidecars for that long. Here the caller
takes its snapshot first (a list of immutable records and views, read
synchronously), then each chunk of `CHUNK_OBJECTS` is built, filtered and
encoded with a `trio.lowlevel.checkpoint()` after it, so no stretch holds the
loop for more than one chunk's work (about a millisecond or two).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import trio

from ..http import Response, json_text
from .filter_expr import Filter
from .filter_shapes import filtered

__all__ = ["CHUNK_OBJECTS", "build_list", "build_map", "json_response"]

# Objects built, filtered or encoded between two checkpoints.
CHUNK_OBJECTS = 500

T = TypeVar("T")


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    return (items[at : at + CHUNK_OBJECTS] for at in range(0, len(items), CHUNK_OBJECTS))


async def build_list(
    items: Sequence[T], build: Callable[[T], Any], chosen: Filter | None
) -> list[Any]:
    """``build(item)`` of each of `items` that `chosen` keeps, in order; a 400 past its budget."""
    found: list[Any] = []
    for part in _chunks(items):
        found.extend(filtered(chosen, [build(item) for item in part]))
        await trio.lowlevel.checkpoint()
    return found


async def build_map(
    items: Sequence[T],
    key: Callable[[T], str],
    build: Callable[[T], Any],
    chosen: Filter | None,
) -> dict[str, Any]:
    """``{key(item): build(item)}`` for the items `chosen` keeps (it sees each value)."""
    found: dict[str, Any] = {}
    for part in _chunks(items):
        found.update(filtered(chosen, {key(item): build(item) for item in part}))
        await trio.lowlevel.checkpoint()
    return found


async def json_response(data: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """`data` as `Response.json` encodes it; a long top-level list or map in chunks.

    Each chunk is dumped on its own and the pieces joined between brackets:
    the same bytes as one ``json.dumps``, without one long stretch.
    """
    if not isinstance(data, list | dict) or len(data) <= CHUNK_OBJECTS:
        return Response.json(data, headers=headers)
    # Each chunk encoded to bytes as it is dumped: the final join is one copy.
    pieces: list[bytes] = []
    if isinstance(data, list):
        for part in _chunks(data):
            pieces.append(json_text(part)[1:-1].encode("utf-8"))
            await trio.lowlevel.checkpoint()
        body = b"[" + b",".join(pieces) + b"]"
    else:
        pairs = list(data.items())
        for pair_part in _chunks(pairs):
            pieces.append(json_text(dict(pair_part))[1:-1].encode("utf-8"))
            await trio.lowlevel.checkpoint()
        body = b"{" + b",".join(pieces) + b"}"
    return Response(body=body, headers=tuple(headers))

"""How the agent's typed errors become HTTP statuses (one place for every endpoint)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..http import HttpError
from .facade import FacadeError, JoinError, KeyringError, KvFull, UnknownMember

__all__ = ["facade_errors"]

# Consul answers a failed join with 500; we keep its status so its clients agree.
_STATUS: tuple[tuple[type[FacadeError], int], ...] = (
    (UnknownMember, 404),
    (KvFull, 413),
    (KeyringError, 400),
    (JoinError, 500),
    (FacadeError, 400),
)


@contextmanager
def facade_errors() -> Iterator[None]:
    """Turn a `FacadeError` raised inside the block into an `HttpError`."""
    try:
        yield
    except FacadeError as exc:
        status = next(code for kind, code in _STATUS if isinstance(exc, kind))
        raise HttpError(status, str(exc) or type(exc).__name__) from None

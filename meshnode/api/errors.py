"""How the agent's typed errors become HTTP statuses (one place for every endpoint)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..catalog.catalog import UnknownLocalCheck, UnknownService
from ..catalog.checks import CheckError, UnknownCheck
from ..catalog.definitions import DefinitionError
from ..http import HttpError
from .facade import FacadeError, JoinError, KeyringError, KvFull, UnknownMember

__all__ = ["catalog_errors", "facade_errors"]

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


@contextmanager
def catalog_errors() -> Iterator[None]:
    """A local service or check the caller named is unknown: 404; a refused definition: 400."""
    try:
        yield
    except (UnknownService, UnknownLocalCheck, UnknownCheck) as exc:
        raise HttpError(404, str(exc)) from None
    except (DefinitionError, CheckError) as exc:
        raise HttpError(400, str(exc)) from None

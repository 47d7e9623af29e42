"""Offering a TLS session to OpenSSL without CPython's copy of it.

CPython's `SSLSocket` session setter (and `wrap_socket(session=...)`)
copies the session through DER before handing it to ``SSL_set_session``, a
workaround for an OpenSSL 1.1.0 bug. The copy re-parses the peer's
certificate: about 155 us per resumed dial, a sixth of the outbound proxy's
CPU per connection. OpenSSL 1.1.1 and later never change a resumable
session (they duplicate it first), so handing the same one to every
connection is what nginx's and stunnel's clients do.

Rules that live here:

- The ``SSL *`` and ``SSL_SESSION *`` are read from the CPython objects:
  the first pointer after the header of `_ssl._SSLSocket` is its ``Socket``
  weak reference, the second its ``SSL *``; the first of `_ssl.SSLSession`
  is its ``SSL_SESSION *`` (``Modules/_ssl.c``, the same in 3.8 to 3.13).
- That layout is only trusted on CPython 3.8-3.13 with the libssl that
  `_ssl` itself loaded (same version number), and only after a check
  against OpenSSL on a live object pair: the ``SSL *`` read from a new
  client socket must report that socket's descriptor and the client role,
  and the ``SSL_SESSION *`` of a session must report its id and time.
  Anything else, once, and `offer_session` is the stdlib setter for the
  life of the process (`fast_path_error` says why).
- The caller offers only sessions of the socket's own context, before the
  handshake, as the stdlib setter requires.
"""

from __future__ import annotations

import ctypes
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["fast_path_error", "offer_session"]


@dataclass(slots=True)
class _Lib:
    set_session: Callable[[int, int], int]
    get_fd: Callable[[int], int]
    is_server: Callable[[int], int]
    session_time: Callable[[int], int]
    session_id: Callable[[int, Any], Any]


_PTR = ctypes.sizeof(ctypes.c_void_p)
# Object header (refcount, type) of a non-debug CPython build.
_HEADER_BYTES = 2 * _PTR
_SSL_OFFSET = _HEADER_BYTES + _PTR  # after the Socket weakref
_SESSION_OFFSET = _HEADER_BYTES


def _pointer_at(obj: object, offset: int) -> int:
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


def _sslobj(tls: ssl.SSLSocket) -> object | None:
    """The `_ssl._SSLSocket` behind `tls` (None once closed)."""
    found: object | None = getattr(tls, "_sslobj", None)
    return found


def _load() -> _Lib:
    """libssl as `_ssl` loaded it (a `dlopen` of `_ssl` resolves through its own dependencies)."""
    import _ssl

    if sys.implementation.name != "cpython" or not (3, 8) <= sys.version_info[:2] <= (3, 13):
        raise RuntimeError(f"unchecked interpreter {sys.implementation.name} {sys.version_info}")
    if hasattr(sys, "gettotalrefcount"):
        raise RuntimeError("a debug build has another object header")
    if _ssl.SSLSession.__basicsize__ < _SESSION_OFFSET + _PTR:
        raise RuntimeError("unexpected SSLSession layout")
    path = getattr(_ssl, "__file__", None)
    lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)
    version = lib.OpenSSL_version_num
    version.restype = ctypes.c_ulong
    if version() != ssl.OPENSSL_VERSION_NUMBER:
        raise RuntimeError("libssl found is not the one _ssl was built with")
    void_p = ctypes.c_void_p

    def function(name: str, restype: Any, *argtypes: Any) -> Any:
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, list(argtypes)
        return func

    found = _Lib(
        function("SSL_set_session", ctypes.c_int, void_p, void_p),
        function("SSL_get_fd", ctypes.c_int, void_p),
        function("SSL_is_server", ctypes.c_int, void_p),
        function("SSL_SESSION_get_time", ctypes.c_long, void_p),
        function(
            "SSL_SESSION_get_id",
            ctypes.POINTER(ctypes.c_ubyte),
            void_p,
            ctypes.POINTER(ctypes.c_uint),
        ),
    )
    # The SSL * of a fresh client socket must be that socket's.
    a, b = socket.socketpair()
    probe: ssl.SSLSocket | None = None
    try:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_socket(
            a, do_handshake_on_connect=False, server_hostname="probe"
        )
        sslobj = _sslobj(probe)
        if type(sslobj).__basicsize__ < _SSL_OFFSET + _PTR:
            raise RuntimeError("unexpected _SSLSocket layout")
        pointer = _pointer_at(sslobj, _SSL_OFFSET)
        if not pointer or found.get_fd(pointer) != probe.fileno() or found.is_server(pointer):
            raise RuntimeError("SSL * not where CPython 3.8-3.13 keep it")
    finally:
        for end in (probe, a, b):  # `a` is detached once wrapped: closing it is a no-op
            if end is not None:
                end.close()
    return found


class _State:
    lib: _Lib | None = None
    error: str = ""
    checked_sessions: bool = False


def fast_path_error() -> str:
    """Why sessions are copied by the stdlib setter; "" while the direct path works."""
    return _State.error


def _session_pointer(lib: _Lib, session: ssl.SSLSession) -> int:
    pointer = _pointer_at(session, _SESSION_OFFSET)
    if not _State.checked_sessions:
        length = ctypes.c_uint(0)
        raw = lib.session_id(pointer, ctypes.byref(length)) if pointer else None
        found_id = bytes(raw[: length.value]) if raw else b""
        if found_id != session.id or lib.session_time(pointer) != session.time:
            raise RuntimeError("SSL_SESSION * not where CPython 3.8-3.13 keep it")
        _State.checked_sessions = True
    return pointer


def offer_session(tls: ssl.SSLSocket, session: ssl.SSLSession) -> None:
    """Offer `session` (of `tls`'s own context) in `tls`'s coming handshake."""
    lib = _State.lib
    if lib is None and not _State.error:
        try:
            lib = _State.lib = _load()
        except (OSError, AttributeError, RuntimeError) as exc:
            _State.error = str(exc)
    sslobj = _sslobj(tls)
    if lib is not None and sslobj is not None:
        try:
            pointer = _session_pointer(lib, session)
        except RuntimeError as exc:
            _State.lib, _State.error = None, str(exc)
        else:
            if lib.set_session(_pointer_at(sslobj, _SSL_OFFSET), pointer) == 1:
                return
    tls.session = session

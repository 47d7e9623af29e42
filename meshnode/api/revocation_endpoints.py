"""Leaf revocation over HTTP (meshnode's own; Consul has none, its issue #2681).

- ``PUT /v1/connect/ca/revoke`` with ``{SerialNumber, CertPEM, Reason}``
  (``SerialNumber`` or ``CertPEM`` or both) revokes one leaf cluster-wide and
  answers the stored revocation. With only a serial, the agent fills in the
  public key from its own leaves when it holds that one; otherwise the
  leaf's owner adds it when the revocation reaches it. Revoking is a denial
  of service on the leaf's service, so it always needs the agent's API
  token: an agent with no ``api_token`` refuses it (403).
- ``GET /v1/connect/ca/revocations``: every revocation, as a blocking query
  (``?index=&wait=``), for proxies that follow the agent over HTTP.

A revocation is ``{SerialNumber (colon hex), PublicKeySHA256 (hex, "" when
not known yet), RevokedAt, NotAfter (RFC 3339), Reason, RevokedBy}``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509

from ..ca.pem import PemError, certs_from_pem
from ..ca.records import rfc3339
from ..ca.revocation import Revocation, RevocationError, parse_serial
from ..ca.revocation_replica import RevocationReplica
from ..http import HttpError, Request, Response, Router
from .auth import request_token
from .bodies import object_body
from .kv_endpoints import parse_index, parse_wait

__all__ = ["register_revocation_routes", "revocation_json"]

_INDEX_HEADER = "X-Consul-Index"
# A leaf and its chain in PEM are ~3 KB; a reason is at most 256 characters.
_BODY_MAX_BYTES = 32 * 1024


def revocation_json(record: Revocation) -> dict[str, Any]:
    return {
        "SerialNumber": record.key,
        "PublicKeySHA256": record.spki_sha256.hex(),
        "RevokedAt": rfc3339(record.revoked_at_s),
        "NotAfter": rfc3339(record.not_after_s),
        "Reason": record.reason,
        "RevokedBy": record.revoked_by,
    }


def register_revocation_routes(
    router: Router,
    revocations: RevocationReplica,
    *,
    own_leaf_pems: Callable[[], Iterable[str]],
    leaf_ttl_s: Callable[[], float],
    current_token: Callable[[], str | None],
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Add the revocation endpoints; `own_leaf_pems` are this agent's own leaves."""

    def require_token(request: Request) -> None:
        expected = current_token()
        if expected is None:
            raise HttpError(
                403,
                "Permission denied: revoking needs the agent's API token, "
                "and this agent has none (set api_token)",
            )
        given = request_token(request)
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(403, "Permission denied: revoking needs the agent's API token")

    def own_leaf(serial: int) -> x509.Certificate | None:
        for pem in own_leaf_pems():
            try:
                cert = certs_from_pem(pem)[0]
            except (PemError, IndexError):
                continue
            if cert.serial_number == serial:
                return cert
        return None

    async def revoke(request: Request) -> Response:
        require_token(request)
        if len(request.body) > _BODY_MAX_BYTES:
            raise HttpError(413, f"request body is over {_BODY_MAX_BYTES} bytes")
        data = object_body(request, allowed={"SerialNumber", "CertPEM", "Reason"}, required=set())
        for name in data:
            if not isinstance(data[name], str):
                raise HttpError(400, f"field {name!r} must be a string")
        cert: x509.Certificate | None = None
        try:
            if data.get("CertPEM"):
                cert = certs_from_pem(data["CertPEM"])[0]
            if data.get("SerialNumber"):
                serial = parse_serial(data["SerialNumber"])
            elif cert is not None:
                serial = cert.serial_number
            else:
                raise HttpError(400, "give SerialNumber or CertPEM (or both)")
            record = revocations.revoke(
                serial,
                cert=cert or own_leaf(serial),
                reason=str(data.get("Reason", "")),
                unknown_not_after_s=wall_clock() + leaf_ttl_s(),
            )
        except (PemError, IndexError) as exc:
            raise HttpError(400, f"CertPEM: {exc or 'no certificate'}") from None
        except RevocationError as exc:
            raise HttpError(400, str(exc)) from None
        return Response.json(revocation_json(record))

    async def listing(request: Request) -> Response:
        index = parse_index(request.query_value("index"))
        if index is not None:
            await revocations.wait_changed(index, parse_wait(request.query_value("wait")))
        body = [revocation_json(r) for r in revocations.current().records]
        body.sort(key=lambda r: r["SerialNumber"])
        headers = [(_INDEX_HEADER, str(max(1, revocations.generation)))]
        return Response.json(body, headers=headers)

    router.add("PUT", "/v1/connect/ca/revoke", revoke)
    router.add("GET", "/v1/connect/ca/revocations", listing)

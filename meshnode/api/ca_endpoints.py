"""The CA endpoints in Consul's shapes, plus meshnode's signer list.

- ``GET /v1/connect/ca/roots`` and ``/v1/agent/connect/ca/roots``: ``{ActiveRootID,
  TrustDomain, Roots: [{ID, Name, SerialNumber, SigningKeyID,
  ExternalTrustDomain, NotBefore, NotAfter, RootCert, IntermediateCerts,
  Active, PrivateKeyType, PrivateKeyBits, CreateIndex, ModifyIndex}]}``, a
  blocking query (``?index=&wait=``) on the CA records; ``?pem`` answers the
  bundle as ``application/pem-certificate-chain``. ``IntermediateCerts`` of
  a root are the active signers' intermediates under it and, for a root
  brought in by a rotation, that root cross-signed by its predecessor.
- ``GET /v1/agent/connect/ca/leaf/<service>``: ``{SerialNumber, CertPEM (the
  leaf, then its chain), PrivateKeyPEM, Service, ServiceURI, ValidAfter,
  ValidBefore, CreateIndex, ModifyIndex}``, blocking on the leaf's index;
  404 when the service is not registered on this agent, 503 when no signer
  could issue one. It carries a private key: with an agent token set, it
  needs the token, like a write.
- ``GET /v1/connect/ca/configuration``: ``{Provider: "meshnode", ClusterID,
  Config: {LeafCertTTL, IntermediateCertTTL, RootCertTTL, CSRMaxPerSecond,
  CASigners}, State, ForceWithoutCrossSigning, CreateIndex, ModifyIndex}``.
  ``PUT`` takes ``{Provider, Config: {LeafCertTTL, CSRMaxPerSecond,
  CASigners, RotateRoot}}``; ``RotateRoot: true`` makes a new root,
  cross-signed by the current one (`meshnode ca rotate`). Consul's external
  root fields (``PrivateKey``, ``RootCert``...) answer 400.
- ``GET /v1/connect/ca/signers`` (meshnode's own): the active signers' node
  names, best first; with ``?all``, every node that asks to sign or is
  approved: ``[{Node, Status (elected|approved|pending), Alive, Fingerprint,
  ApprovedBy}]``.
- ``PUT /v1/connect/ca/signers/<node>`` (a write: the API token when set)
  approves the node's pending signer request with the active root key. It
  must be sent to an approved signer; ``?fingerprint=`` makes it refuse a
  request made with another identity key. ``DELETE`` withdraws an approval.
  Both answer 400 with one line when the node cannot do it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from ..ca.approval import fingerprint
from ..ca.leaf_manager import LeafError, LeafManager, UnknownLocalService
from ..ca.pem import cert_from_pem, colon_hex
from ..ca.provider import ROOT_TTL_S
from ..ca.records import KIND, RootRecord, rfc3339, root_key
from ..ca.service import CAError, CAService, ConfigChange, owned_service_names
from ..catalog.records import ServiceRecord
from ..config import parse_duration_s as config_duration_s
from ..http import HttpError, Request, Response, Router
from .bodies import object_body
from .kv_endpoints import parse_index, parse_wait

__all__ = ["go_duration", "parse_duration_s", "register_ca_routes", "roots_json"]

_INDEX_HEADER = "X-Consul-Index"
_PROVIDER = "meshnode"
_CONFIG_BODY_MAX_BYTES = 16 * 1024
_CONFIG_FIELDS = {"LeafCertTTL", "CSRMaxPerSecond", "CASigners", "RotateRoot"}
_UNSUPPORTED = {
    "PrivateKey",
    "RootCert",
    "IntermediateCertTTL",
    "RotationPeriod",
    "PrivateKeyType",
    "PrivateKeyBits",
    "RootCertTTL",
}


def go_duration(seconds: float) -> str:
    """Consul's (Go's) duration text: ``72h0m0s``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s"


def parse_duration_s(value: object, name: str) -> int:
    """A Consul duration (``72h``, ``90m``, ``3600s``) for `name`; 400 otherwise."""
    try:
        return int(config_duration_s(value))
    except ValueError as exc:
        raise HttpError(400, f"Config.{name}: {exc}") from None


def _root_json(ca: CAService, root: RootRecord, active: bool) -> dict[str, Any]:
    cert = cert_from_pem(root.cert_pem)
    intermediates = [i.cert_pem for i in ca.view.intermediates_of(root.id)]
    if root.cross_pem:
        intermediates.append(root.cross_pem)
    config = ca.view.config
    create, modify = ca.state.tracker.entry_indexes(KIND, root_key(root.id))
    return {
        "ID": root.id,
        "Name": f"meshnode CA root {root.generation}",
        "SerialNumber": cert.serial_number,
        "SigningKeyID": colon_hex(
            x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
        ),
        "ExternalTrustDomain": config.cluster_id if config is not None else "",
        "NotBefore": rfc3339(cert.not_valid_before_utc.timestamp()),
        "NotAfter": rfc3339(cert.not_valid_after_utc.timestamp()),
        "RootCert": root.cert_pem,
        "IntermediateCerts": intermediates,
        "Active": active,
        "PrivateKeyType": "ec",
        "PrivateKeyBits": 256,
        "CreateIndex": max(1, create),
        "ModifyIndex": max(1, modify),
    }


def roots_json(ca: CAService, now_wall_s: float) -> dict[str, Any]:
    """Consul's root list: the active root and every root still trusted."""
    view = ca.view
    if view.config is None or view.active is None:
        return {"ActiveRootID": "", "TrustDomain": "", "Roots": []}
    return {
        "ActiveRootID": view.active.id,
        "TrustDomain": view.config.trust_domain,
        "Roots": [_root_json(ca, r, r is view.active) for r in view.trusted(now_wall_s)],
    }


def register_ca_routes(
    router: Router,
    ca: CAService,
    leaves: LeafManager,
    local_services: Callable[[], list[ServiceRecord]],
    *,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Add the CA endpoints backed by `ca` and `leaves`."""

    def headers(index: int) -> list[tuple[str, str]]:
        return [(_INDEX_HEADER, str(max(1, index)))]

    async def roots(request: Request) -> Response:
        index = parse_index(request.query_value("index"))
        if index is not None:
            await ca.wait(index, parse_wait(request.query_value("wait")))
        if request.has_query("pem") and request.query_value("pem") not in ("false", "0"):
            bundle = "".join(r.cert_pem for r in ca.view.trusted(wall_clock()))
            return Response(
                body=bundle.encode("ascii"),
                headers=tuple(headers(ca.index())),
                content_type="application/pem-certificate-chain",
            )
        return Response.json(roots_json(ca, wall_clock()), headers=headers(ca.index()))

    async def leaf(request: Request) -> Response:
        service = request.params["service"]
        if service not in owned_service_names(local_services()):
            raise HttpError(
                404,
                f"service {service[:80]!r} is not registered on this agent: "
                "a leaf is issued only to the agent that runs the service",
            )
        index = parse_index(request.query_value("index"))
        try:
            current = await leaves.get(service)
            if index is not None and current.generation <= index:
                await leaves.wait_changed(service, index, parse_wait(request.query_value("wait")))
                current = await leaves.get(service)
        except UnknownLocalService as exc:
            raise HttpError(404, str(exc)) from None
        except LeafError as exc:
            raise HttpError(503, str(exc)) from None
        body = {
            "SerialNumber": current.serial,
            "CertPEM": current.cert_pem + current.chain_pem,
            "PrivateKeyPEM": current.key_pem,
            "Service": service,
            "ServiceURI": current.spiffe_id,
            "ValidAfter": rfc3339(current.valid_after_s),
            "ValidBefore": rfc3339(current.valid_before_s),
            "CreateIndex": current.create_generation,
            "ModifyIndex": current.generation,
        }
        return Response.json(body, headers=headers(current.generation))

    async def get_config(request: Request) -> Response:
        config = ca.view.config
        if config is None:
            raise HttpError(404, "the cluster has no CA yet (no signer-eligible agent has started)")
        create, modify = ca.state.tracker.entry_indexes(KIND, "config")
        body = {
            "Provider": _PROVIDER,
            "ClusterID": config.cluster_id,
            "Config": {
                "LeafCertTTL": go_duration(config.leaf_ttl_s),
                "IntermediateCertTTL": go_duration(config.intermediate_ttl_s),
                "RootCertTTL": go_duration(ROOT_TTL_S),
                "CSRMaxPerSecond": config.csr_max_per_second,
                "CASigners": config.ca_signers,
            },
            "State": None,
            "ForceWithoutCrossSigning": False,
            "CreateIndex": max(1, create),
            "ModifyIndex": max(1, modify),
        }
        return Response.json(body, headers=headers(ca.index()))

    async def put_config(request: Request) -> Response:
        if len(request.body) > _CONFIG_BODY_MAX_BYTES:
            raise HttpError(413, f"request body is over {_CONFIG_BODY_MAX_BYTES} bytes")
        data = object_body(
            request,
            allowed={"Provider", "Config", "ForceWithoutCrossSigning", "ClusterID", "State"},
            required={"Config"},
        )
        provider = data.get("Provider") or _PROVIDER
        if provider != _PROVIDER:
            raise HttpError(
                400, f"Provider {str(provider)[:40]!r} is not supported: use 'meshnode'"
            )
        if data.get("ForceWithoutCrossSigning"):
            raise HttpError(400, "ForceWithoutCrossSigning is not supported: rotations cross-sign")
        change = _config_change(data["Config"])
        try:
            await ca.configure(change)
        except CAError as exc:
            raise HttpError(503, str(exc)) from None
        return Response.empty()

    async def signers(request: Request) -> Response:
        if not request.has_query("all"):
            return Response.json(ca.signers(), headers=headers(ca.index()))
        rows = [
            {
                "Node": row.node,
                "Status": row.status,
                "Alive": row.alive,
                "Fingerprint": row.fingerprint,
                "ApprovedBy": row.approved_by,
            }
            for row in ca.signer_table()
        ]
        return Response.json(rows, headers=headers(ca.index()))

    async def approve(request: Request) -> Response:
        node = request.params["node"]
        try:
            approval = ca.approve(node, request.query_value("fingerprint") or None)
        except CAError as exc:
            raise HttpError(400, str(exc)) from None
        body = {
            "Node": approval.node,
            "Fingerprint": fingerprint(approval.public_key_der),
            "ApprovedBy": approval.approved_by,
        }
        return Response.json(body, headers=headers(ca.index()))

    async def revoke(request: Request) -> Response:
        try:
            ca.revoke(request.params["node"])
        except CAError as exc:
            raise HttpError(400, str(exc)) from None
        return Response.empty()

    router.add("GET", "/v1/connect/ca/roots", roots)
    router.add("GET", "/v1/agent/connect/ca/roots", roots)
    router.add("GET", "/v1/agent/connect/ca/leaf/{service}", leaf, secret=True)
    router.add("GET", "/v1/connect/ca/configuration", get_config)
    router.add("PUT", "/v1/connect/ca/configuration", put_config)
    router.add("GET", "/v1/connect/ca/signers", signers)
    router.add("PUT", "/v1/connect/ca/signers/{node}", approve)
    router.add("DELETE", "/v1/connect/ca/signers/{node}", revoke)


def _config_change(config: object) -> ConfigChange:
    if not isinstance(config, dict):
        raise HttpError(400, "field 'Config' must be an object")
    for name in config:
        if name in _UNSUPPORTED:
            raise HttpError(
                400, f"Config.{name} is not supported by the meshnode provider (roots are its own)"
            )
        if name not in _CONFIG_FIELDS:
            raise HttpError(400, f"unknown field 'Config.{name}'")
    leaf_ttl_s = None
    if config.get("LeafCertTTL") is not None:
        leaf_ttl_s = parse_duration_s(config["LeafCertTTL"], "LeafCertTTL")
        if not 60 <= leaf_ttl_s <= 10 * 365 * 86400:
            raise HttpError(400, "Config.LeafCertTTL must be between 1m and 10 years")
    rate = config.get("CSRMaxPerSecond")
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or not 0 < rate <= 1e6
    ):
        raise HttpError(400, "Config.CSRMaxPerSecond must be a number in (0, 1000000]")
    signers = config.get("CASigners")
    if signers is not None and (
        isinstance(signers, bool) or not isinstance(signers, int) or not 1 <= signers <= 64
    ):
        raise HttpError(400, "Config.CASigners must be an integer in 1..64")
    rotate = config.get("RotateRoot", False)
    if not isinstance(rotate, bool):
        raise HttpError(400, "Config.RotateRoot must be true or false")
    return ConfigChange(
        leaf_ttl_s=leaf_ttl_s,
        csr_max_per_second=None if rate is None else float(rate),
        ca_signers=signers,
        rotate=rotate,
    )

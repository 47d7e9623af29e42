"""From a validated definition to the records one registration writes.

Rules that live here (Consul's, unless said):

- A service's checks get the IDs ``service:<id>`` (one check) or
  ``service:<id>:<n>`` (several, from 1) unless given, and the name
  ``Service '<name>' check``.
- ``connect.sidecar_service`` becomes a second service ``<id>-sidecar-proxy``
  (name ``<name>-sidecar-proxy``), kind ``connect-proxy``, with the parent's
  address, tags and meta, a port from 21000..21255 that no other local proxy
  uses (kept across re-registrations), and a TCP check named "Connect
  Sidecar Listening" on that port at the address the sidecar listens on (the
  service's address, else the agent's advertised one).
- A re-registered check keeps its status and output unless the definition
  sets a status, so re-reading the config does not flap services to critical.
- Planning writes nothing: every refusal happens before the first write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .definitions import (
    ID_MAX_CHARS,
    NAME_MAX_CHARS,
    CheckDefinition,
    DefinitionError,
    ProxyDefinition,
    ServiceDefinition,
)
from .records import CheckRecord, ServiceRecord

__all__ = [
    "SIDECAR_PORT_MAX",
    "SIDECAR_PORT_MIN",
    "SIDECAR_SUFFIX",
    "Plan",
    "RegistrationError",
    "plan_service",
]

# Consul's sidecar_min_port / sidecar_max_port defaults.
SIDECAR_PORT_MIN = 21000
SIDECAR_PORT_MAX = 21255
SIDECAR_SUFFIX = "-sidecar-proxy"
# Consul checks a sidecar's public listener every 10 s.
SIDECAR_CHECK_INTERVAL_S = 10.0
SIDECAR_CHECK_NAME = "Connect Sidecar Listening"
DEFAULT_LOCAL_ADDRESS = "127.0.0.1"
INITIAL_STATUS = "critical"  # Consul's: a check is critical until it has passed once


class RegistrationError(DefinitionError):
    """A valid definition that cannot be registered here (ID clash, no free sidecar port)."""


@dataclass(slots=True)
class Plan:
    """What one registration writes: the service (and its sidecar) and their checks."""

    services: list[ServiceRecord] = field(default_factory=list)
    checks: list[CheckRecord] = field(default_factory=list)


def _check_ids(defn: ServiceDefinition) -> list[str]:
    if len(defn.checks) == 1:
        return [defn.checks[0].check_id or f"service:{defn.service_id}"]
    return [c.check_id or f"service:{defn.service_id}:{i}" for i, c in enumerate(defn.checks, 1)]


def _check_records(
    node: str,
    service: ServiceRecord,
    checks: list[tuple[str, CheckDefinition]],
    existing: Mapping[str, CheckRecord],
) -> list[CheckRecord]:
    records = []
    for check_id, check in checks:
        old = existing.get(check_id)
        if old is not None and old.service_id != service.service_id:
            raise RegistrationError(
                f"check ID {check_id!r} already belongs to service {old.service_id!r}"
            )
        definition = replace(
            check, check_id=check_id, name=check.name or f"Service '{service.name}' check"
        )
        keep = old is not None and not check.status
        records.append(
            CheckRecord(
                node=node,
                check_id=check_id,
                status=old.status if old is not None and keep else check.status or INITIAL_STATUS,
                definition=definition,
                output=old.output if old is not None and keep else "",
                service_id=service.service_id,
                service_name=service.name,
            )
        )
    return records


def _sidecar_port(
    sidecar_id: str, existing: Mapping[str, ServiceRecord], reserved: set[int]
) -> int:
    old = existing.get(sidecar_id)
    taken = reserved | {
        s.port
        for s in existing.values()
        if s.kind == "connect-proxy" and s.service_id != sidecar_id
    }
    if (
        old is not None
        and SIDECAR_PORT_MIN <= old.port <= SIDECAR_PORT_MAX
        and old.port not in taken
    ):
        return old.port
    for port in range(SIDECAR_PORT_MIN, SIDECAR_PORT_MAX + 1):
        if port not in taken:
            return port
    raise RegistrationError(
        f"no free sidecar port in {SIDECAR_PORT_MIN}..{SIDECAR_PORT_MAX}:"
        " set connect.sidecar_service.port"
    )


def _sidecar(
    defn: ServiceDefinition,
    node: str,
    source: str,
    existing: Mapping[str, ServiceRecord],
    reserved: set[int],
    node_address: str,
) -> tuple[ServiceRecord, CheckDefinition] | None:
    side = defn.sidecar
    if side is None:
        return None
    sidecar_id = defn.service_id + SIDECAR_SUFFIX
    name = defn.name + SIDECAR_SUFFIX
    if len(name) > NAME_MAX_CHARS or len(sidecar_id) > ID_MAX_CHARS:
        raise DefinitionError(
            f"service name {defn.name!r} is too long for a sidecar: {name!r} must fit"
            f" {NAME_MAX_CHARS} characters"
        )
    old = existing.get(sidecar_id)
    if old is not None and old.sidecar_of != defn.service_id:
        raise RegistrationError(f"service ID {sidecar_id!r} is taken by another service")
    port = side.port or _sidecar_port(sidecar_id, existing, reserved)
    reserved.add(port)
    proxy = ProxyDefinition(
        destination_service_name=defn.name,
        destination_service_id=defn.service_id,
        local_service_address=side.local_service_address or DEFAULT_LOCAL_ADDRESS,
        local_service_port=side.local_service_port or defn.port,
        upstreams=side.upstreams,
    )
    definition = ServiceDefinition(
        name=name,
        service_id=sidecar_id,
        port=port,
        address=defn.address,
        tags=defn.tags,
        meta=defn.meta,
        kind="connect-proxy",
        proxy=proxy,
    )
    record = ServiceRecord(node, definition, source=source, sidecar_of=defn.service_id)
    check = CheckDefinition(
        kind="tcp",
        name=SIDECAR_CHECK_NAME,
        # Where the sidecar listens: the service's address, else the agent's.
        tcp=f"{defn.address or node_address}:{port}",
        interval_s=SIDECAR_CHECK_INTERVAL_S,
    )
    return record, check


def plan_service(
    defn: ServiceDefinition,
    *,
    node: str,
    source: str,
    services: Mapping[str, ServiceRecord],
    checks: Mapping[str, CheckRecord],
    reserved_ports: set[int],
    node_address: str = DEFAULT_LOCAL_ADDRESS,
) -> Plan:
    """The records registering `defn` writes, given this node's current services and checks.

    `reserved_ports` holds sidecar ports already promised in the same batch; the
    port chosen here is added to it.
    """
    old = services.get(defn.service_id)
    if old is not None and old.sidecar_of:
        raise RegistrationError(
            f"service ID {defn.service_id!r} is the sidecar of {old.sidecar_of!r}"
        )
    service = ServiceRecord(node, replace(defn, checks=(), sidecar=None), source=source)
    plan = Plan(services=[service])
    plan.checks = _check_records(
        node, service, list(zip(_check_ids(defn), defn.checks, strict=True)), checks
    )
    sidecar = _sidecar(defn, node, source, services, reserved_ports, node_address)
    if sidecar is not None:
        record, check = sidecar
        plan.services.append(record)
        plan.checks += _check_records(
            node, record, [(f"service:{record.service_id}", check)], checks
        )
    return plan

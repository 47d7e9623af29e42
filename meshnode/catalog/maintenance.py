"""Maintenance mode: a critical check the agent adds to its node or to one of its services.

Rules that live here (Consul's):

- Node maintenance is the check ``_node_maintenance``; it has no service, so
  it makes every service of the node critical: out of DNS and ``?passing``.
- Service maintenance is ``_service_maintenance:<service-id>``, a check of
  that service alone.
- The check is of type ``maintenance``, critical, and its ``Notes`` carry the
  operator's reason (or a default that says none was given). No runner runs
  it: only disabling maintenance (or deregistering the check) clears it.
- Enabling twice keeps the first reason; disabling what is not enabled is a
  no-op.
"""

from __future__ import annotations

from .definitions import MAINTENANCE, TEXT_MAX_CHARS, CheckDefinition, DefinitionError
from .records import CheckRecord, ServiceRecord

__all__ = [
    "NODE_MAINTENANCE_ID",
    "SERVICE_MAINTENANCE_PREFIX",
    "is_maintenance",
    "node_maintenance_check",
    "parse_enable",
    "service_maintenance_check",
    "service_maintenance_id",
]

NODE_MAINTENANCE_ID = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"
_NODE_NAME = "Node Maintenance Mode"
_SERVICE_NAME = "Service Maintenance Mode"
_NO_REASON = "Maintenance mode was enabled on this {what} without a reason."
# Go's strconv.ParseBool, which Consul uses for ?enable= (py-consul sends "True").
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def is_maintenance(check_id: str) -> bool:
    """True for the IDs maintenance mode owns (users may not register them)."""
    return check_id == NODE_MAINTENANCE_ID or check_id.startswith(SERVICE_MAINTENANCE_PREFIX)


def service_maintenance_id(service_id: str) -> str:
    return SERVICE_MAINTENANCE_PREFIX + service_id


def parse_enable(text: str | None) -> bool:
    """``?enable=``: required, and a boolean as Go spells one; `DefinitionError` otherwise."""
    if text is None:
        raise DefinitionError("missing ?enable= (true or false)")
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DefinitionError(f"?enable= must be true or false, not {text[:40]!r}")


def _reason(reason: str, what: str) -> str:
    if len(reason) > TEXT_MAX_CHARS:
        raise DefinitionError(f"?reason= is longer than {TEXT_MAX_CHARS} characters")
    return reason or _NO_REASON.format(what=what)


def _definition(check_id: str, name: str, notes: str) -> CheckDefinition:
    return CheckDefinition(kind=MAINTENANCE, check_id=check_id, name=name, notes=notes, timeout_s=0)


def node_maintenance_check(node: str, reason: str) -> CheckRecord:
    """The node's maintenance check; `DefinitionError` for an over-long reason."""
    notes = _reason(reason, "node")
    return CheckRecord(
        node=node,
        check_id=NODE_MAINTENANCE_ID,
        status="critical",
        definition=_definition(NODE_MAINTENANCE_ID, _NODE_NAME, notes),
    )


def service_maintenance_check(service: ServiceRecord, reason: str) -> CheckRecord:
    """`service`'s maintenance check; `DefinitionError` for an over-long reason."""
    check_id = service_maintenance_id(service.service_id)
    notes = _reason(reason, "service")
    return CheckRecord(
        node=service.node,
        check_id=check_id,
        status="critical",
        definition=_definition(check_id, _SERVICE_NAME, notes),
        service_id=service.service_id,
        service_name=service.name,
    )

"""SPIFFE IDs of meshnode: one format for services, one for agents.

Rules that live here:

- Trust domain: ``<cluster-id>.mesh``; lower-case letters, digits, ``.``,
  ``-`` and ``_`` (SPIFFE ID spec, "Trust Domain"), at most 255 characters.
- Path segments: letters, digits, ``.``, ``-`` and ``_`` (the spec's
  characters for a path segment), never empty, never ``.`` or ``..``.
- Exactly two path shapes are ours, and nothing else parses:
  ``/ns/<ns>/dc/<dc>/svc/<service>`` (a service) and
  ``/agent/client/dc/<dc>/id/<node>`` (an agent), Consul's shapes.
- No query, fragment, port, user info or percent-encoding: the ID is compared
  as a string by every verifier, so it has exactly one spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "AgentID",
    "ServiceID",
    "SpiffeError",
    "parse_spiffe_id",
    "trust_domain_for",
    "validate_trust_domain",
]

# The spec's own bounds ("Maximum SPIFFE ID Length", "Maximum Trust Domain Length").
_URI_MAX_CHARS = 2048
_TRUST_DOMAIN_MAX_CHARS = 255
_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeError(ValueError):
    """A string is not one of meshnode's SPIFFE IDs (one-line message)."""


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise SpiffeError("SPIFFE trust domain is empty")
    if len(trust_domain) > _TRUST_DOMAIN_MAX_CHARS:
        raise SpiffeError(f"SPIFFE trust domain is over {_TRUST_DOMAIN_MAX_CHARS} characters")
    if _TRUST_DOMAIN.fullmatch(trust_domain) is None:
        raise SpiffeError(
            f"SPIFFE trust domain {trust_domain[:100]!r} may hold only lower-case letters, "
            "digits, '.', '-' and '_'"
        )


def _check_segment(what: str, segment: str) -> None:
    if not segment:
        raise SpiffeError(f"SPIFFE {what} is empty")
    if segment in (".", ".."):
        raise SpiffeError(f"SPIFFE {what} is a dot segment {segment!r}")
    if _SEGMENT.fullmatch(segment) is None:
        raise SpiffeError(
            f"SPIFFE {what} {segment[:100]!r} may hold only letters, digits, '.', '-' and '_'"
        )


@dataclass(frozen=True, slots=True)
class ServiceID:
    """The identity of a service instance: what its leaf certificate proves."""

    trust_domain: str
    datacenter: str
    service: str
    namespace: str = "default"

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain)
        _check_segment("namespace", self.namespace)
        _check_segment("datacenter", self.datacenter)
        _check_segment("service", self.service)

    @property
    def uri(self) -> str:
        """``spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>``."""
        return (
            f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}"
            f"/dc/{self.datacenter}/svc/{self.service}"
        )


@dataclass(frozen=True, slots=True)
class AgentID:
    """The identity of an agent (a node), Consul's ``/agent/client`` shape."""

    trust_domain: str
    datacenter: str
    node: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain)
        _check_segment("datacenter", self.datacenter)
        _check_segment("node", self.node)

    @property
    def uri(self) -> str:
        """``spiffe://<td>/agent/client/dc/<dc>/id/<node>``."""
        return f"{_SCHEME}{self.trust_domain}/agent/client/dc/{self.datacenter}/id/{self.node}"


def parse_spiffe_id(uri: str) -> ServiceID | AgentID:
    """The service or agent ID that `uri` spells; `SpiffeError` for anything else.

    Strict, because a certificate's URI is compared as a string: a second
    spelling of the same ID (upper case, a port, ``%2F``) would be a second ID.
    """
    if len(uri) > _URI_MAX_CHARS:
        raise SpiffeError(f"SPIFFE ID is over {_URI_MAX_CHARS} characters")
    if not uri.startswith(_SCHEME):
        raise SpiffeError(f"{uri[:100]!r} is not a spiffe:// URI")
    rest = uri[len(_SCHEME) :]
    for char, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
        if char in rest:
            raise SpiffeError(f"SPIFFE ID {uri[:100]!r} has {what}")
    trust_domain, slash, path = rest.partition("/")
    if "@" in trust_domain:
        raise SpiffeError(f"SPIFFE ID {uri[:100]!r} has user info")
    if ":" in trust_domain:
        raise SpiffeError(f"SPIFFE ID {uri[:100]!r} has a port")
    _check_trust_domain(trust_domain)
    if not slash or not path:
        raise SpiffeError(f"SPIFFE ID {uri[:100]!r} has no path (a trust domain, not a workload)")
    segments = path.split("/")
    for segment in segments:
        _check_segment("path segment", segment)
    match segments:
        case ["ns", namespace, "dc", datacenter, "svc", service]:
            return ServiceID(trust_domain, datacenter, service, namespace)
        case ["agent", "client", "dc", datacenter, "id", node]:
            return AgentID(trust_domain, datacenter, node)
    raise SpiffeError(
        f"SPIFFE ID {uri[:100]!r} is neither /ns/<ns>/dc/<dc>/svc/<service> "
        "nor /agent/client/dc/<dc>/id/<node>"
    )


def trust_domain_for(cluster_id: str) -> str:
    """The cluster's trust domain, ``<cluster-id>.mesh``; `SpiffeError` if it is not valid."""
    return validate_trust_domain(f"{cluster_id}.mesh")


def validate_trust_domain(trust_domain: str) -> str:
    """`trust_domain` itself if the SPIFFE spec allows it; `SpiffeError` else."""
    _check_trust_domain(trust_domain)
    return trust_domain

"""Consul's `/v1/agent/metrics?format=prometheus`: the metrics as Prometheus text (pure).

Rules that live here:
- The input is what `/v1/agent/metrics` answers as JSON (`Gauges`,
  `Counters`); the output is the Prometheus text format 0.0.4, which Consul
  serves (`CONTENT_TYPE`) and Prometheus and OpenMetrics parsers read.
- meshnode's own names follow Prometheus' conventions: `.` becomes `_` and
  counters end in `_total` (`meshnode.gossip.udp.sent_bytes` is
  `meshnode_gossip_udp_sent_bytes_total`). Counters named by an error kind
  or a refusal code (`udp.rejected.DecodeError`, `ca.refused.<code>`) are one
  family with a label (`meshnode_gossip_udp_rejected_total{kind="DecodeError"}`).
- Where a meaning is the same as a Consul metric's, that metric is given
  too, spelled as Consul's own Prometheus output spells it (no `_total`,
  `network="lan"`), so a Consul dashboard finds it: `CONSUL_EQUIVALENTS`.
- Each family has one HELP and one TYPE line and its samples together; label
  values and help text are escaped, so no name can break the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CONSUL_EQUIVALENTS", "CONTENT_TYPE", "ConsulEquivalent", "prometheus_text"]

# What Consul's Prometheus endpoint answers with (promhttp's text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_PREFIX = "meshnode.gossip."
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True, slots=True)
class ConsulEquivalent:
    """A Consul metric whose meaning one of ours (or a sum of ours) has exactly."""

    name: str
    kind: Kind
    help: str
    # meshnode metric names after `meshnode.gossip.`, summed.
    sources: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = (("network", "lan"),)


def _members(state: str, source: str) -> ConsulEquivalent:
    return ConsulEquivalent(
        "consul_memberlist_node_instances",
        "gauge",
        "Members in each state, this agent's view (memberlist.node.instances)",
        (source,),
        (("network", "lan"), ("node_state", state)),
    )


CONSUL_EQUIVALENTS: tuple[ConsulEquivalent, ...] = (
    ConsulEquivalent(
        "consul_memberlist_udp_sent",
        "counter",
        "Bytes sent over UDP by gossip (memberlist.udp.sent)",
        ("udp.sent_bytes",),
    ),
    ConsulEquivalent(
        "consul_memberlist_udp_received",
        "counter",
        "Bytes received over UDP by gossip (memberlist.udp.received)",
        ("udp.recv_bytes",),
    ),
    ConsulEquivalent(
        "consul_memberlist_tcp_sent",
        "counter",
        "Bytes sent over TCP by gossip push/pull (memberlist.tcp.sent)",
        ("tcp.sent_bytes",),
    ),
    ConsulEquivalent(
        "consul_memberlist_health_score",
        "gauge",
        "Lifeguard local health: 0 is healthy (memberlist.health.score)",
        ("health_score",),
    ),
    _members("alive", "members.alive"),
    _members("suspect", "members.suspect"),
    _members("dead", "members.failed"),
    _members("left", "members.left"),
    ConsulEquivalent(
        "consul_serf_member_join",
        "counter",
        "Members that joined or came back, seen here (serf.member.join)",
        ("member.joined",),
    ),
    ConsulEquivalent(
        "consul_serf_member_failed",
        "counter",
        "Members declared failed, seen here (serf.member.failed)",
        ("member.failed",),
    ),
    ConsulEquivalent(
        "consul_serf_member_left",
        "counter",
        "Members that left gracefully, seen here (serf.member.left)",
        ("member.left",),
    ),
    ConsulEquivalent(
        "consul_serf_member_flap",
        "counter",
        "Members back within 60 s of failing (serf.member.flap)",
        ("member.flapped",),
    ),
    ConsulEquivalent(
        "consul_serf_events",
        "counter",
        "New user events received, before filters (serf.events)",
        ("events.delivered", "events.filtered_out"),
    ),
)

# Counters whose last name part is a kind or code: one family with that label.
_LABELLED = (
    ("udp.rejected.", "kind"),
    ("tcp.rejected.", "kind"),
    ("ca.refused.", "code"),
)

# Help for meshnode's families by name prefix (after `meshnode.gossip.`);
# the longest matching prefix wins. docs/http-api.md has the full table.
_HELP = {
    "members.": "Members in this state, this agent's view",
    "health_score": "Lifeguard local health (0 healthy, up to 7)",
    "broadcast_queue": "Updates waiting to be piggybacked on gossip",
    "udp.": "Gossip UDP traffic",
    "udp.rejected": "Gossip UDP input dropped, by error kind",
    "tcp.": "Gossip TCP (push/pull) traffic",
    "tcp.rejected": "Gossip TCP input dropped, by error kind",
    "push_pull.": "Full-state exchanges",
    "core.": "Gossip protocol events",
    "member.": "Member changes seen here",
    "store.": "Replicated store activity",
    "events.": "User events",
    "events.handler.": "Event handler runs",
    "catalog.": "Replicated catalog records",
    "intentions.": "Replicated intention records",
    "revocations.": "Replicated revocation records",
    "audit.": "Intention decisions in the audit log",
    "dns.": "DNS server activity (docs/dns.md)",
    "ca.": "Certificate authority activity",
    "ca.refused": "Leaf requests refused, by code",
}


@dataclass(slots=True)
class _Family:
    kind: Kind
    help: str
    # Labels -> value; the first wins when two names clean up to the same one.
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _metric_name(text: str) -> str:
    name = _BAD_NAME_CHARS.sub("_", text)
    return name if not name[:1].isdigit() else "_" + name


def _help_for(short: str) -> str:
    best = ""
    for prefix in _HELP:
        if short.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    meaning = _HELP.get(best, "meshnode metric")
    return f"{meaning} ({_PREFIX}{short})" if best else f"{meaning} ({short})"


def _label_name(text: str) -> str:
    name = _BAD_LABEL_CHARS.sub("_", text)
    return name if name[:1].isalpha() else "l_" + name  # `__` is Prometheus' own prefix


def _labels_of(
    entry: Mapping[str, Any], taken: tuple[str, ...] = ()
) -> tuple[tuple[str, str], ...]:
    """The entry's labels, cleaned; a name already used (or in `taken`) is dropped."""
    raw = entry.get("Labels")
    found: dict[str, str] = {}
    for key, value in raw.items() if isinstance(raw, Mapping) else ():
        name = _label_name(str(key))
        if name not in taken:
            found.setdefault(name, str(value))
    return tuple(sorted(found.items()))


def _own_family(
    name: str, kind: Kind, entry: Mapping[str, Any]
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """(family name, help, labels) for one of meshnode's metrics, by its JSON name."""
    short = name.removeprefix(_PREFIX)
    if kind == "counter" and short != name:
        for prefix, label in _LABELLED:
            if short.startswith(prefix) and len(short) > len(prefix):
                base = prefix.rstrip(".")
                family = _metric_name(_PREFIX + base) + "_total"
                labels = ((label, short[len(prefix) :]), *_labels_of(entry, (label,)))
                return family, _help_for(base), tuple(sorted(labels))
    family = _metric_name(name)
    suffix = "_total" if kind == "counter" else ""
    return family + suffix, _help_for(short), _labels_of(entry)


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def prometheus_text(metrics: Mapping[str, Any]) -> str:
    """The JSON metrics (`Gauges`, `Counters`) as Prometheus text, Consul's names included."""
    families: dict[str, _Family] = {}
    values: dict[str, float] = {}

    def add(entries: Iterable[Mapping[str, Any]], kind: Kind, field_name: str) -> None:
        for entry in entries:
            full = str(entry.get("Name", ""))
            value = entry.get(field_name, 0)
            if not full or not isinstance(value, int | float):
                continue
            values[full.removeprefix(_PREFIX)] = value
            name, help_text, labels = _own_family(full, kind, entry)
            family = families.setdefault(name, _Family(kind, help_text))
            if family.kind == kind:  # a name clash between kinds keeps the first
                family.samples.setdefault(labels, value)

    add(metrics.get("Gauges", ()), "gauge", "Value")
    add(metrics.get("Counters", ()), "counter", "Count")
    for eq in CONSUL_EQUIVALENTS:  # always given: 0 before the first increment
        family = families.setdefault(eq.name, _Family(eq.kind, eq.help))
        family.samples.setdefault(eq.labels, sum(values.get(s, 0) for s in eq.sources))

    lines: list[str] = []
    for name, family in families.items():
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {family.kind}")
        for labels, value in family.samples.items():
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"

"""Text rendering of API answers for the CLI: members tables and info sections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..addr import format_host_port

__all__ = ["STATUS_NAMES", "format_table", "info_lines", "member_row", "status_name"]

# serf's status integers as Consul's `members` prints them.
STATUS_NAMES = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}


def status_name(member: Mapping[str, Any]) -> str:
    return STATUS_NAMES.get(member.get("Status", 0), "unknown")


def _tags(member: Mapping[str, Any]) -> str:
    tags = member.get("Tags") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def member_row(member: Mapping[str, Any], *, detailed: bool) -> list[str]:
    address = format_host_port(str(member.get("Addr", "")), int(member.get("Port", 0)))
    row = [str(member.get("Name", "")), address, status_name(member)]
    if detailed:
        row += [str(member.get("State", status_name(member))), str(member.get("ProtocolCur", ""))]
    return [*row, _tags(member)]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces, no trailing blanks."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _section(name: str, values: Mapping[str, Any]) -> list[str]:
    return [f"{name}:", *(f"\t{k} = {values[k]}" for k in sorted(values))]


def info_lines(self_info: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    """`consul info`-style sections from /v1/agent/self and /v1/agent/metrics."""
    config = self_info.get("Config") or {}
    member = self_info.get("Member") or {}
    agent = {
        "node_name": config.get("NodeName", ""),
        "node_id": config.get("NodeID", ""),
        "datacenter": config.get("Datacenter", ""),
        "version": config.get("Version", ""),
    }
    if member:
        agent["addr"] = format_host_port(str(member.get("Addr", "")), int(member.get("Port", 0)))
        agent["status"] = status_name(member)
    lines = _section("agent", agent)
    stats = self_info.get("Stats") or {}
    for name in sorted(stats):
        if isinstance(stats[name], Mapping):
            lines += _section(name, stats[name])
    gauges = {g["Name"]: g.get("Value") for g in metrics.get("Gauges") or [] if "Name" in g}
    counters = {
        c["Name"]: f"{c.get('Count')} (sum {c.get('Sum')})"
        for c in metrics.get("Counters") or []
        if "Name" in c
    }
    if gauges:
        lines += _section("gauges", gauges)
    if counters:
        lines += _section("counters", counters)
    return lines

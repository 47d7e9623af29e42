"""The limits of a proxy's listeners and dials, shared with native services (connect/)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    # A handshake is a few round trips and ~3 ms of CPU; 10 s only cuts peers
    # that stall on purpose (or hosts far beyond overload).
    handshake_timeout_s: float = 10.0
    # Dialling the local app or a peer proxy: loopback or one LAN hop.
    connect_timeout_s: float = 5.0
    # Per listener; a 64 KiB buffer each way makes 1,024 connections 128 MiB.
    max_connections: int = 1024
    # Envoy's tcp_proxy default idle timeout (1 h): long-lived database
    # connections survive, abandoned ones do not pile up.
    idle_timeout_s: float = 3600.0
    # Per direction and connection; past 64 KiB throughput no longer grows
    # here (bench/proxy_vs_stunnel.py), memory does.
    buffer_bytes: int = 64 * 1024
    # Instances tried per outbound connection, and the time for all tries.
    upstream_attempts: int = 3
    upstream_deadline_s: float = 10.0

"""The limits of a proxy's listeners and dials, shared with native services (connect/)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    # A handshake is a few round trips and ~3 ms of CPU; 3 s is a thousand
    # times that, and short enough that idle connections (a flood, a scan)
    # give their slots back quickly (security finding 7; it was 10 s).
    handshake_timeout_s: float = 3.0
    # Connections from one client address still in their handshake: a client
    # proxy's burst of new connections stays far below it, a flood of idle
    # TCP from one address is closed past it and cannot take the listener.
    max_handshakes_per_source: int = 128
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

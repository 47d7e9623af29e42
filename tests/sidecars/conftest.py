"""Fixtures for the embedded-sidecar tests: the proxy tests' CA pair and the real-agent cluster."""

from __future__ import annotations

from tests.integration.conftest import cluster
from tests.proxy.conftest import ca, other_ca

__all__ = ["ca", "cluster", "other_ca"]

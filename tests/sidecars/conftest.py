"""Fixtures for the embedded-sidecar tests: the proxy tests' CA pair, shared rather than copied."""

from __future__ import annotations

from tests.proxy.conftest import ca, other_ca

__all__ = ["ca", "other_ca"]

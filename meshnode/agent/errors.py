"""The error that stops an agent from starting."""

from __future__ import annotations

__all__ = ["AgentStartError"]


class AgentStartError(Exception):
    """The agent cannot start (port taken, bad data dir...); one line for the user."""

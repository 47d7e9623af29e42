"""Structured, one-line logs on stderr.

Every line reads ``2026-11-22T04:30:00.123Z INFO gossip: member joined node=web1
addr=127.0.0.1:7946``: a UTC timestamp, the level, the subsystem (the logger name
without its ``meshnode.`` prefix), the message, then ``key=value`` fields
(logfmt quoting). One event is always one line so logs can be grepped and parsed.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["LEVELS", "LogfmtFormatter", "get_logger", "log", "setup_logging"]

# The CLI's --log-level choices; "warn" and "trace" are accepted as Consul spells them.
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ALIASES = {"warn": "warning", "trace": "debug", "err": "error"}

_ROOT = "meshnode"
_FIELDS_ATTR = "meshnode_fields"


def level_number(level: str) -> int:
    """Map a level name (any case, Consul aliases allowed) to its number."""
    name = level.strip().lower()
    name = _ALIASES.get(name, name)
    try:
        return LEVELS[name]
    except KeyError:
        choices = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {level!r} (choose one of {choices})") from None


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\r\t'):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """Formats a record as one logfmt-ish line; tracebacks are folded into a field."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z"
        name = record.name
        if name == _ROOT:
            name = "agent"
        elif name.startswith(_ROOT + "."):
            name = name[len(_ROOT) + 1 :]
        parts = [stamp, record.levelname, f"{name}:", record.getMessage().replace("\n", " ")]
        fields: dict[str, Any] = getattr(record, _FIELDS_ATTR, None) or {}
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"error={_quote(f'{type(exc).__name__}: {exc}')}")
            if logging.getLogger(_ROOT).isEnabledFor(logging.DEBUG):
                # A bug's traceback is worth the extra lines, but only when asked for.
                return " ".join(parts) + "\n" + self.formatException(record.exc_info)
        return " ".join(parts)


_handler: logging.Handler | None = None


def setup_logging(level: str, *, stream: TextIO | None = None) -> None:
    """Send meshnode's logs to stderr (or `stream`) at `level`; safe to call again."""
    global _handler
    root = logging.getLogger(_ROOT)
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    _handler.setFormatter(LogfmtFormatter())
    root.addHandler(_handler)
    root.setLevel(level_number(level))
    # Our lines are complete on their own; the root logger would print them twice.
    root.propagate = False


def get_logger(subsystem: str) -> logging.Logger:
    """The logger of one subsystem (``gossip``, ``http`` ...) under ``meshnode``."""
    return logging.getLogger(f"{_ROOT}.{subsystem}")


def log(
    logger: logging.Logger,
    level: str | int,
    msg: str,
    *,
    exc_info: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log `msg` with `fields` rendered as ``key=value`` after it.

    `exc_info` adds ``error="Type: message"`` (and the traceback at debug level).
    """
    levelno = level if isinstance(level, int) else level_number(level)
    if logger.isEnabledFor(levelno):
        logger.log(levelno, msg, exc_info=exc_info, extra={_FIELDS_ATTR: fields})

"""Log lines: timestamp, level, subsystem, message, logfmt fields, always one line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from meshnode.logs import get_logger, log, setup_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    setup_logging("info", stream=out)
    yield out
    root = logging.getLogger("meshnode")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)


def test_line_shape(stream: io.StringIO) -> None:
    log(get_logger("gossip"), "info", "member joined", node="web1", addr="127.0.0.1:7946")
    line = stream.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO gossip: member joined"
        r" node=web1 addr=127.0.0.1:7946\n",
        line,
    ), line


def test_quoting_and_one_line(stream: io.StringIO) -> None:
    log(get_logger("http"), "warning", "bad\nthing", reason='say "hi"', empty="", n=3)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert 'WARNING http: bad thing reason="say \\"hi\\"" empty="" n=3' in line


def test_level_filter_and_errors(stream: io.StringIO) -> None:
    logger = get_logger("x")
    log(logger, "debug", "hidden")
    try:
        raise ValueError("nope")
    except ValueError as exc:
        log(logger, "error", "failed", exc_info=exc)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith('ERROR x: failed error="ValueError: nope"')


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud")

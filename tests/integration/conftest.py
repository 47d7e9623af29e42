"""Fixtures for tests that run real agents (see `meshnode.testutil`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.testutil import Cluster, keep_logs


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
        if keep_logs():
            for a in c.agents:
                print(f"--- {a.name}\n{a.log_text()[-3000:]}")

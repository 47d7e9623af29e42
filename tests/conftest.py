"""Settings shared by every test folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour, not speed: on a busy 2-core CI machine a
# slow draw or example must not fail them (benchmarks measure speed).
settings.register_profile(
    "meshnode",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("meshnode")


@pytest.fixture(autouse=True)
def _restore_meshnode_logger() -> Iterator[None]:
    """A CLI run in-process (CliRunner) calls setup_logging, which stops the
    ``meshnode`` logger propagating: without this, a later test's caplog sees
    nothing, depending on the order the tests ran in."""
    root = logging.getLogger("meshnode")
    saved = (list(root.handlers), root.propagate, root.level)
    yield
    root.handlers[:] = saved[0]
    root.propagate, root.level = saved[1], saved[2]

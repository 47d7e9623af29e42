"""Settings shared by every test folder."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Property tests check behaviour, not speed: on a busy 2-core CI machine a
# slow draw or example must not fail them (benchmarks measure speed).
settings.register_profile(
    "meshnode",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("meshnode")

"""The one duration grammar (Go's `time.ParseDuration`, as Consul uses it) and its callers.

The table cases are every spelling the two grammars it replaced (the config's
and the catalog's) accepted, each refusal they shared, and what Go adds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.api.kv_endpoints import parse_wait
from meshnode.catalog.definitions import DefinitionError, parse_service
from meshnode.config import ConfigError, load_config
from meshnode.durations import (
    GO_DURATION_MAX_S,
    DurationError,
    DurationRangeError,
    format_duration,
    parse_duration_s,
)
from meshnode.http import HttpError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("72h", 259200.0),
        ("1.5h", 5400.0),
        ("1h0m0s", 3600.0),
        ("2h45m10.5s", 9910.5),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1s1s", 2.0),
        ("1500us", 0.0015),
        ("1500\u00b5s", 0.0015),  # micro sign
        ("1500\u03bcs", 0.0015),  # Greek mu: Go takes both
        ("2000000ns", 0.002),
        (" 30s ", 30.0),  # the catalog's grammar stripped spaces
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "10",  # a unit is required, as in Go (only "0" may go without)
        "0.0",
        "s",
        ".s",
        "10x",
        "10 s",
        "1m 30s",
        "-1s",  # no sign: nothing here may be negative
        "+1s",
        "1d",  # Go has no day unit
        "1S",
        "\u0663s",  # an Arabic-Indic 3: Go takes ASCII digits only
        "10s garbage",
    ],
)
def test_not_durations(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration_s(text)
    assert not isinstance(caught.value, DurationRangeError)
    assert str(caught.value).startswith("invalid duration ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "max_s"),
    [
        ("25h", 86400.0),
        ("86400.001s", 86400.0),
        ("2562048h", GO_DURATION_MAX_S),  # past Go's int64 nanoseconds (about 292 years)
        ("9" * 400 + "h", GO_DURATION_MAX_S),  # would be float infinity
    ],
)
def test_out_of_range(text: str, max_s: float) -> None:
    with pytest.raises(DurationRangeError, match=r"is more than \S+ s$"):
        parse_duration_s(text, max_s=max_s)


def test_a_bound_is_inclusive() -> None:
    assert parse_duration_s("24h", max_s=86400.0) == 86400.0


def test_a_long_bad_value_is_quoted_short() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration_s("x" * 10_000)
    assert len(str(caught.value)) < 120


@given(st.integers(min_value=1, max_value=86400 * 1000))
def test_format_duration_round_trips(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration_s(format_duration(seconds)) == pytest.approx(seconds, abs=1e-3)


# -- the callers: their policy on top of the one grammar ----------------------


def _load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(data))
    return load_config({"dev": True}, [path], has_stored_keyring=lambda _: False)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1m30s", 90.0), (".5s", 0.5), ("1500ms", 1.5), (45, 45.0), (2.5, 2.5)],
)
def test_the_config_takes_go_durations_and_json_numbers_of_seconds(
    tmp_path: Path, value: object, seconds: float
) -> None:
    assert _load(tmp_path, {"retry_interval": value}).retry_join_interval_s == seconds


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('"30"', "'30' is not a duration"),
        ('"0s"', "'0s' must be a positive duration"),
        ("-5", "-5 must be a positive duration"),
        ("true", "True is not a duration"),
        # Python's json module reads these; before, the config took them as
        # an endless or NaN retry interval.
        ("Infinity", "inf is not a duration within"),
        ("NaN", "nan is not a duration within"),
        ('"3000000h"', "is more than"),
    ],
)
def test_the_config_refuses_with_one_line(tmp_path: Path, raw: str, fragment: str) -> None:
    path = tmp_path / "agent.json"
    path.write_text('{"retry_interval": ' + raw + "}")
    with pytest.raises(ConfigError) as caught:
        load_config({"dev": True}, [path], has_stored_keyring=lambda _: False)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("value", "ttl_s"), [("0", 0), ("0s", 0), (0, 0), ("0ms", 0), ("5s", 5)])
def test_dns_ttls_may_be_zero(tmp_path: Path, value: object, ttl_s: int) -> None:
    config = _load(tmp_path, {"dns_config": {"node_ttl": value}})
    assert config.dns is not None
    assert config.dns.node_ttl_s == ttl_s


def test_a_check_takes_go_spellings_and_caps_at_a_day() -> None:
    service = parse_service({"Name": "web", "Check": {"TTL": "1m.5s"}})
    assert service.checks[0].ttl_s == 60.5
    with pytest.raises(DefinitionError, match="is more than 86400 s"):
        parse_service({"Name": "web", "Check": {"TTL": "24h1ms"}})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (None, 300.0),
        ("", 300.0),
        ("10", 10.0),  # bare seconds, as this API always took
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1m30s", 90.0),  # refused before: one unit only
        (".5s", 0.5),
        ("1h", 600.0),  # capped
        ("3000000h", 600.0),  # past Go's range: still just the cap
    ],
)
def test_a_blocking_wait_uses_the_grammar_and_the_cap(text: str | None, seconds: float) -> None:
    assert parse_wait(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1s", "1d", "10 s"])
def test_a_bad_wait_is_a_400(text: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_wait(text)
    assert caught.value.status == 400

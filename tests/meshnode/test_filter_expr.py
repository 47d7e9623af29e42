"""?filter= expressions: go-bexpr's grammar and meaning, bounds, and only typed errors."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.api.filter_expr import (
    MAX_DEPTH,
    MAX_EXPRESSION_CHARS,
    FilterError,
    parse_filter,
)
from meshnode.api.filter_shapes import CATALOG_SERVICE, HEALTH_ENTRY

WEB: dict[str, Any] = {
    "Node": "n1",
    "ServiceName": "web",
    "ServiceID": "web-1",
    "ServiceTags": ["v1", "prod"],
    "ServiceMeta": {"env": "prod", "team": "a b"},
    "ServicePort": 8080,
    "ServiceEnableTagOverride": False,
    "ServiceProxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]},
}


def keeps(expression: str, datum: dict[str, Any] = WEB) -> bool:
    return parse_filter(expression, CATALOG_SERVICE).keep(datum)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('ServiceName == "web"', True),
        ("ServiceName == web", True),  # a bare word is its own text, as in go-bexpr
        ("ServiceName == `web`", True),
        ('ServiceName != "web"', False),
        ('ServiceID == "web-1"', True),
        ("ServicePort == 8080", True),
        ('ServicePort == "8080"', True),  # compared as the field's type
        ("ServicePort != 80", True),
        ("ServiceEnableTagOverride == false", True),
        ("ServiceEnableTagOverride == true", False),
        ('"v1" in ServiceTags', True),
        ('"v2" in ServiceTags', False),
        ('"v2" not in ServiceTags', True),
        ('ServiceTags contains "prod"', True),
        ('ServiceTags not contains "prod"', False),
        ('"eb" in ServiceName', True),  # substring on text
        ('"env" in ServiceMeta', True),  # key on a map
        ('"prod" in ServiceMeta', False),
        ('ServiceMeta.env == "prod"', True),
        ('ServiceMeta["team"] == "a b"', True),
        ("ServiceMeta[`env`] == prod", True),
        ('ServiceMeta.missing == ""', False),
        ("ServiceMeta.missing is empty", True),
        ("ServiceMeta.env is not empty", True),
        ("ServiceTags is empty", False),
        ("ServiceAddress is empty", True),  # not in this object: empty
        ('ServiceName matches "^w.b$"', True),
        ('ServiceName not matches "^db"', True),
        ('ServiceProxy.Upstreams.DestinationName == "db"', True),  # any element
        ("ServiceProxy.Upstreams.LocalBindPort == 9191", True),
        ('ServiceName == "web" and "v1" in ServiceTags', True),
        ('ServiceName == "db" or ServicePort == 8080', True),
        ('not ServiceName == "web"', False),
        ('not not ServiceName == "web"', True),
        ('(ServiceName == "db" or ServiceName == "web") and ServicePort == 8080', True),
        ('ServiceName == "db" or ServiceName == "web" and ServicePort == 1', False),  # and first
        ('not (ServiceName == "db")', True),
        ('ServiceMeta.env == "a\\"b"', False),
        ("  ( ServiceName==web )  ", True),
    ],
)
def test_consul_examples(expression: str, expected: bool) -> None:
    assert keeps(expression) is expected


def test_health_entries_select_nested_objects_and_any_check() -> None:
    entry = {
        "Node": {"Node": "n1", "Meta": {"rack": "a"}},
        "Service": {"Service": "web", "Tags": ["v1"]},
        "Checks": [{"Status": "passing"}, {"Status": "critical"}],
    }
    chosen = parse_filter
    assert chosen('Node.Meta.rack == "a"', HEALTH_ENTRY).keep(entry)
    assert chosen('Checks.Status == "critical"', HEALTH_ENTRY).keep(entry)
    assert not chosen('Checks.Status != "critical"', HEALTH_ENTRY).keep(entry)
    assert chosen('"v1" in Service.Tags', HEALTH_ENTRY).apply([entry, {}]) == [entry]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ('Foo == "x"', "filter: unknown field 'Foo'"),
        ('ServiceMeta.a.b == "x"', "filter: field 'ServiceMeta.a.b' goes below a value"),
        ('ServiceProxy == "x"', "filter: field 'ServiceProxy' is an object, not a value"),
        ('ServicePort == "eighty"', "filter: field 'ServicePort' is a number, not 'eighty'"),
        ("ServiceEnableTagOverride == yes", "is a boolean, not 'yes'"),
        ('ServiceTags == "v1"', "'==' cannot compare 'ServiceTags'; use 'contains'"),
        ('"8" in ServicePort', "'in' needs text, a list or a map"),
        ('ServiceTags matches "v"', "'matches' needs a text field"),
        ("ServicePort is empty", "'is empty' needs text"),
        ("", "filter: the expression is empty"),
        ("ServiceName ==", "ends too early"),
        ('(ServiceName == "x"', "unmatched parenthesis"),
        ('ServiceName == "x")', "unexpected ')'"),
        ('ServiceName == "x', "unterminated string"),
        ("ServiceName = x", "unexpected '='"),
        ("ServiceName like x", "expected an operator"),
        ('ServiceName == "\\q"', "unknown escape"),
        ('ServiceName matches "("', "invalid regular expression"),
        ('ServiceName matches "(a+)+$"', "nested repetition"),
        ('ServiceName matches "(a|aa)*$"', "nested repetition"),
        ("ServiceName matches `(a)\\1`", "backreferences"),
        ('ServiceName matches "(?=a)"', "only (?: and (?i) groups"),
        ('ServiceName matches "a*b+"', "allows one repetition"),
        ('ServiceName matches ".*a+b*.*"', "allows one repetition"),
        ('ServiceName matches "' + "a" * 300 + '"', "longer than 256"),
        ("x" * (MAX_EXPRESSION_CHARS + 1), "longer than 2048"),
        ("(" * (MAX_DEPTH + 2) + "ServiceName == x" + ")" * (MAX_DEPTH + 2), "nested deeper"),
    ],
)
def test_bad_expressions_are_one_line_errors(expression: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(expression, CATALOG_SERVICE)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_fields_are_refused_without_any_data() -> None:
    """As Consul: validated against the result's fields, so an empty answer still says so."""
    with pytest.raises(FilterError, match=r"unknown field 'Service\.Nam'"):
        parse_filter('Service.Nam == "web"', HEALTH_ENTRY)


def test_allowed_regexes_stay_fast_on_long_values() -> None:
    """4 KiB is the longest text a check has (its output); cubic patterns took 57 s here."""
    value = {"ServiceName": "a" * 4096 + "!"}
    started = time.perf_counter()
    for pattern in ('".*a.*b$"', '"^[ab]+c"', '".*.*a?b.*"', '"(?i)^A.*B"'):
        assert not keeps(f"ServiceName matches {pattern}", value)
    assert time.perf_counter() - started < 0.5


def test_an_ordinary_regex_over_a_long_answer_stays_within_its_budget() -> None:
    """100,000 objects: ~0.2 s of searching, under 10 ms + 20 µs per object."""
    chosen = parse_filter('ServiceID matches "-9+$"', CATALOG_SERVICE)
    many = [{"ServiceID": f"web-{i}"} for i in range(100_000)]
    assert len(chosen.apply(many)) == 5  # -9, -99, ..., -99999


def test_free_ends_do_not_change_the_answer() -> None:
    for pattern in (".*web.*", ".*web", "web.*", "^web.*", ".*b$", "\\\\.*"):
        expression = f"ServiceName matches `{pattern}`"
        for name in ("web", "xweby", "b", "\\x", "w\neb"):
            got = parse_filter(expression, CATALOG_SERVICE).keep({"ServiceName": name})
            assert got is bool(re.search(pattern, name)), (pattern, name)


def test_regex_time_over_the_budget_is_a_filter_error() -> None:
    chosen = parse_filter('ServiceName matches "a+$"', CATALOG_SERVICE)
    many = [{"ServiceName": "a" * 4096 + "!"}] * 10_000  # quadratic: ~50 ms each here
    started = time.perf_counter()
    with pytest.raises(FilterError, match=r"'matches' took [0-9]+ ms on this answer"):
        chosen.apply(many)
    assert time.perf_counter() - started < 0.5


_PIECES = "ServiceName ServiceMeta.env ServiceTags ServicePort Foo == != in not and or is empty"
_PIECES += " contains matches ( ) 80 -1.5 true [ ] . \\"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from([*_PIECES.split(), '"web"', "`v1`", '["k"]', '"']),
        max_size=12,
    ).map(" ".join)
    | st.text(max_size=60)
)
def test_arbitrary_input_raises_only_filter_error(expression: str) -> None:
    try:
        chosen = parse_filter(expression, CATALOG_SERVICE)
    except FilterError as exc:
        assert str(exc).startswith("filter: ") and "\n" not in str(exc)
        return
    assert isinstance(chosen.keep(WEB), bool)
    assert isinstance(chosen.keep({}), bool)

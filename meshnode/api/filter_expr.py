"""Consul's ``?filter=`` expressions (go-bexpr's grammar), parsed and evaluated sans-IO.

The expression comes from any HTTP client, so everything is bounded: its
length (`MAX_EXPRESSION_CHARS`), its nesting (`MAX_DEPTH`), each regex's
length (`MAX_REGEX_CHARS`, compiled once per request). Selectors are checked
against the endpoint's `Shape` before anything is evaluated, as Consul checks
them against the result type, so a typo is a 400 even when the list is empty.
Evaluating one object walks each selector once: cost is linear in the size of
the answer times the size of the expression. Every problem is a `FilterError`
with a one-line message; nothing else escapes `parse_filter`.

Semantics follow go-bexpr: ``==``/``!=`` compare as the field's type (text,
integer, boolean); ``in``/``contains`` are a substring test on text, an
element test on a list and a key test on a map; ``is empty`` is a zero length;
a selector through a list of objects (``Checks.Status``) matches when any
element does; a map key that is missing is an empty value.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Union

__all__ = [
    "BOOL",
    "INT",
    "MATCH_BUDGET_PER_OBJECT_S",
    "MATCH_BUDGET_S",
    "MAX_DEPTH",
    "MAX_EXPRESSION_CHARS",
    "MAX_REGEX_CHARS",
    "STR",
    "STR_LIST",
    "STR_MAP",
    "Filter",
    "FilterError",
    "ListOf",
    "Shape",
    "parse_filter",
]

MAX_EXPRESSION_CHARS: Final = 2048
MAX_DEPTH: Final = 32
MAX_REGEX_CHARS: Final = 256
# Regex time per request: 50 ms, plus 20 µs per object searched (an ordinary
# pattern takes ~1 µs), so a long answer is not refused for its length but a
# pathological pattern (tens of ms per 4 KiB value) stops after a few objects.
MATCH_BUDGET_S: Final = 0.01
MATCH_BUDGET_PER_OBJECT_S: Final = 20e-6


class FilterError(ValueError):
    """The expression cannot be parsed or does not fit the endpoint's fields."""


# A field's type: a leaf kind, an object (a Shape), or a list of objects.
Leaf = Literal["str", "int", "bool", "str_list", "str_map"]
STR: Final[Leaf] = "str"
INT: Final[Leaf] = "int"
BOOL: Final[Leaf] = "bool"
STR_LIST: Final[Leaf] = "str_list"
STR_MAP: Final[Leaf] = "str_map"


@dataclass(frozen=True)
class ListOf:
    """A list of objects of `shape` (Consul's ``Checks``, ``Upstreams``)."""

    shape: Shape


Shape = Mapping[str, Union[Leaf, "Shape", ListOf]]

# ------------------------------------------------------------------ tokens

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<op>==|!=|\(|\))
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<selector>[A-Za-z][A-Za-z0-9_/]*
        (?:\.[A-Za-z][A-Za-z0-9_/]*|\.[0-9]+|\[[ \t]*(?:"(?:[^"\\]|\\.)*"|`[^`]*`)[ \t]*\])*)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "is", "empty", "in", "contains", "matches"})
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "/": "/", "'": "'"}
_INDEX = re.compile(r"\[[ \t]*(\"(?:[^\"\\]|\\.)*\"|`[^`]*`)[ \t]*\]")
_PART = re.compile(r"\.([A-Za-z][A-Za-z0-9_/]*|[0-9]+)")


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "string", "number", "selector", "word" (a keyword)
    text: str
    at: int


def _unquote(literal: str) -> str:
    if literal.startswith("`"):
        return literal[1:-1]
    out = []
    body = literal[1:-1]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise FilterError(f"filter: unknown escape '\\{nxt}' in a string")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _tokens(text: str) -> list[_Token]:
    found = []
    at = 0
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None:
            if text[at] in '"`':
                raise FilterError(f"filter: unterminated string at character {at + 1}")
            raise FilterError(f"filter: unexpected {text[at]!r} at character {at + 1}")
        kind = m.lastgroup or ""
        if kind != "space":
            word = m.group()
            if kind == "selector" and word in _KEYWORDS:
                kind = "word"
            found.append(_Token(kind, word, at))
        at = m.end()
    return found


def _path(selector: str) -> tuple[str, ...]:
    """``Service.Meta["k"]`` -> ("Service", "Meta", "k")."""
    head = re.match(r"[A-Za-z][A-Za-z0-9_/]*", selector)
    assert head is not None  # the tokenizer only makes selectors that start so
    parts = [head.group()]
    at = head.end()
    while at < len(selector):
        index = _INDEX.match(selector, at)
        if index is not None:
            parts.append(_unquote(index.group(1)))
            at = index.end()
            continue
        part = _PART.match(selector, at)
        assert part is not None
        parts.append(part.group(1))
        at = part.end()
    return tuple(parts)


# ------------------------------------------------------------------ tree

Node = Callable[[Any], bool]
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _leaf_of(shape: Shape, path: tuple[str, ...], shown: str) -> Leaf:
    """The selected field's kind (a map's key is text, and may be missing)."""
    current: Leaf | Shape | ListOf = shape
    keyed = False
    for i, part in enumerate(path):
        if isinstance(current, ListOf):
            current = current.shape
        if isinstance(current, str):
            if current == STR_MAP and not keyed and i == len(path) - 1:
                current, keyed = STR, True
                continue
            raise FilterError(f"filter: field {shown!r} goes below a value")
        if part not in current:
            raise FilterError(f"filter: unknown field {shown!r}")
        current = current[part]
    if not isinstance(current, str):
        raise FilterError(f"filter: field {shown!r} is an object, not a value")
    return current


def _values(datum: Any, path: tuple[str, ...]) -> list[Any]:
    """Every value `path` reaches in `datum` (several through lists of objects)."""
    if len(path) == 1:  # the common case: ~20 % faster on long answers
        return [datum[path[0]]] if isinstance(datum, dict) and path[0] in datum else []
    current = [datum]
    for part in path:
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, list):
                nxt.extend(e[part] for e in item if isinstance(e, dict) and part in e)
            elif isinstance(item, dict) and part in item:
                nxt.append(item[part])
        current = nxt
    return current


def _coerce(kind: Leaf, raw: str, shown: str) -> Any:
    if kind == INT:
        try:
            return int(raw)
        except ValueError:
            raise FilterError(f"filter: field {shown!r} is a number, not {raw[:40]!r}") from None
    if kind == BOOL:
        if raw not in _BOOLS:
            raise FilterError(f"filter: field {shown!r} is a boolean, not {raw[:40]!r}") from None
        return _BOOLS[raw]
    return raw


def _match(shape: Shape, budget: _Budget, selector: _Token, op: str, raw: str | None) -> Node:
    path = _path(selector.text)
    shown = selector.text[:80]
    kind = _leaf_of(shape, path, shown)
    if op in ("==", "!="):
        if kind not in (STR, INT, BOOL):
            raise FilterError(f"filter: '{op}' cannot compare {shown!r}; use 'contains'")
        assert raw is not None
        want = _coerce(kind, raw, shown)

        def equal(datum: Any) -> bool:
            return any(v == want and type(v) is type(want) for v in _values(datum, path))

        return equal if op == "==" else (lambda d: not equal(d))
    if op in ("in", "not in"):
        if kind in (INT, BOOL):
            raise FilterError(f"filter: 'in' needs text, a list or a map, not {shown!r}")
        assert raw is not None
        needle = raw

        def contains(datum: Any) -> bool:
            for v in _values(datum, path):
                if isinstance(v, str) and needle in v:
                    return True
                if isinstance(v, (list, dict)) and needle in v:
                    return True
            return False

        return contains if op == "in" else (lambda d: not contains(d))
    if op in ("is empty", "is not empty"):
        if kind in (INT, BOOL):
            raise FilterError(f"filter: 'is empty' needs text, a list or a map, not {shown!r}")

        def empty(datum: Any) -> bool:
            found = _values(datum, path)
            return not found or any(len(v) == 0 for v in found if isinstance(v, (str, list, dict)))

        return empty if op == "is empty" else (lambda d: not empty(d))
    # matches / not matches
    if kind != STR:
        raise FilterError(f"filter: 'matches' needs a text field, not {shown!r}")
    assert raw is not None
    if len(raw) > MAX_REGEX_CHARS:
        raise FilterError(f"filter: regular expression longer than {MAX_REGEX_CHARS} characters")
    searched = _without_free_ends(raw)
    _refuse_backtracking(searched)
    try:
        pattern = re.compile(searched)
    except (re.error, RecursionError, OverflowError) as exc:
        raise FilterError(f"filter: invalid regular expression: {str(exc)[:80]}") from None

    def matches(datum: Any) -> bool:
        started_s = time.perf_counter()
        found = any(isinstance(v, str) and pattern.search(v) for v in _values(datum, path))
        budget.spend(time.perf_counter() - started_s)
        return found

    return matches if op == "matches" else (lambda d: not matches(d))


def _without_free_ends(pattern: str) -> str:
    """Drop a leading and a trailing ``.*``: the same yes or no for a search, far fewer steps."""
    while pattern.startswith(".*") and not pattern.startswith((".*?", ".**", ".*+")):
        pattern = pattern[2:]
    while pattern.endswith(".*") and not pattern.endswith("\\.*") and len(pattern) > 2:
        pattern = pattern[:-2]
    return pattern


def _refuse_backtracking(pattern: str) -> None:
    """Refuse what makes Python's backtracking engine slow (Go's RE2 never is).

    Backreferences and lookarounds, a quantified group holding a quantifier or
    an alternation (``(a+)+``, ``(a|a)*``), and more than one unbounded
    repetition (``*``, ``+``, ``{}``) once free ``.*`` ends are dropped: what
    is left is at worst quadratic in the value's length (4 KiB at most, a
    check's output), and `_Budget` bounds the sum over an answer.
    """
    quantifiers = 0
    groups: list[bool] = []  # per open group: holds a quantifier or an alternation
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if pattern[i + 1 : i + 2].isdigit():
                raise FilterError("filter: backreferences are not supported in 'matches'")
            i += 2
            continue
        if ch == "[":  # a character class: skip to its end
            end = pattern.find("]", i + 2)
            i = len(pattern) if end < 0 else end + 1
            continue
        if ch == "(":
            if pattern.startswith("(?", i) and not pattern.startswith(("(?:", "(?i)"), i):
                raise FilterError("filter: only (?: and (?i) groups are supported in 'matches'")
            groups.append(False)
        elif ch == ")" and groups:
            inner = groups.pop()
            if pattern[i + 1 : i + 2] in ("*", "+", "?", "{") and inner:
                raise FilterError("filter: nested repetition is not supported in 'matches'")
            if groups:
                groups[-1] = groups[-1] or inner
        elif ch == "|" and groups:
            groups[-1] = True
        elif ch in "*+{?" and i > 0 and pattern[i - 1] not in "*+?}(":
            quantifiers += ch != "?"
            if groups:
                groups[-1] = True
        i += 1
    if quantifiers > 1:
        raise FilterError(
            "filter: 'matches' allows one repetition (*, +, {}) besides a leading or trailing '.*'"
        )


class _Budget:
    """Time spent in regular expressions for one request: past its allowance, a 400."""

    def __init__(self) -> None:
        self.spent_s = 0.0
        self.allowed_s = MATCH_BUDGET_S

    def spend(self, elapsed_s: float) -> None:
        self.spent_s += elapsed_s
        self.allowed_s += MATCH_BUDGET_PER_OBJECT_S
        if self.spent_s > self.allowed_s:
            raise FilterError(
                f"filter: 'matches' took {self.spent_s * 1000:.0f} ms on this answer;"
                " use a simpler regular expression or a narrower query"
            )


class _Parser:
    """Recursive descent over the tokens: or < and < not < (group | match)."""

    def __init__(self, tokens: list[_Token], shape: Shape) -> None:
        self.tokens = tokens
        self.at = 0
        self.shape = shape
        self.budget = _Budget()

    def peek(self, offset: int = 0) -> _Token | None:
        i = self.at + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def is_word(self, word: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token is not None and token.kind in ("word", "op") and token.text == word

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("filter: the expression ends too early")
        self.at += 1
        return token

    def expect(self, word: str) -> None:
        token = self.take()
        if token.text != word or token.kind not in ("word", "op"):
            raise FilterError(f"filter: expected '{word}' at character {token.at + 1}")

    def parse(self) -> Node:
        node = self.or_expr(0)
        token = self.peek()
        if token is not None:
            raise FilterError(f"filter: unexpected {token.text[:40]!r} at character {token.at + 1}")
        return node

    def joined(self, word: str, operand: Callable[[], Node]) -> list[Node]:
        """Operands separated by `word` (a flat list: no recursion per operand)."""
        nodes = [operand()]
        while self.is_word(word):
            self.take()
            nodes.append(operand())
        return nodes

    def or_expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FilterError(f"filter: nested deeper than {MAX_DEPTH} levels")
        nodes = self.joined("or", lambda: self.and_expr(depth))
        return nodes[0] if len(nodes) == 1 else (lambda d: any(n(d) for n in nodes))

    def and_expr(self, depth: int) -> Node:
        nodes = self.joined("and", lambda: self.not_expr(depth))
        return nodes[0] if len(nodes) == 1 else (lambda d: all(n(d) for n in nodes))

    def not_expr(self, depth: int) -> Node:
        negations = 0
        while self.is_word("not"):
            self.take()
            negations += 1
        node = self.primary(depth)
        if negations % 2:
            return lambda d: not node(d)
        return node

    def primary(self, depth: int) -> Node:
        if self.is_word("("):
            self.take()
            node = self.or_expr(depth + 1)
            if not self.is_word(")"):
                raise FilterError("filter: unmatched parenthesis")
            self.take()
            return node
        return self.match()

    def value(self) -> str:
        token = self.take()
        if token.kind == "string":
            return _unquote(token.text)
        if token.kind in ("number", "selector", "word"):
            return token.text  # go-bexpr takes a bare word or number as its text
        raise FilterError(f"filter: expected a value at character {token.at + 1}")

    def selector(self) -> _Token:
        token = self.take()
        if token.kind != "selector":
            raise FilterError(f"filter: expected a field name at character {token.at + 1}")
        return token

    def match(self) -> Node:
        first = self.peek()
        if first is None:
            raise FilterError("filter: the expression ends too early")
        # "value" in Selector / "value" not in Selector
        if self.is_word("in", 1) or (self.is_word("not", 1) and self.is_word("in", 2)):
            raw = self.value()
            op = "in" if self.is_word("in") else "not in"
            self.take()
            if op == "not in":
                self.take()
            return _match(self.shape, self.budget, self.selector(), op, raw)
        selector = self.selector()
        token = self.take()
        if token.kind == "op" and token.text in ("==", "!="):
            return _match(self.shape, self.budget, selector, token.text, self.value())
        negated = token.text == "not" and token.kind == "word"
        if negated:
            token = self.take()
        word = token.text if token.kind == "word" else ""
        if word == "is" and not negated:
            op = "is empty"
            if self.is_word("not"):
                self.take()
                op = "is not empty"
            self.expect("empty")
            return _match(self.shape, self.budget, selector, op, None)
        if word == "contains":
            return _match(
                self.shape, self.budget, selector, "not in" if negated else "in", self.value()
            )
        if word == "matches":
            op = "not matches" if negated else "matches"
            return _match(self.shape, self.budget, selector, op, self.value())
        raise FilterError(
            f"filter: expected an operator after {selector.text[:40]!r} at character {token.at + 1}"
        )


@dataclass(frozen=True)
class Filter:
    """A parsed expression: call `keep` on an object, or `apply` to a list or map of them.

    Evaluating may raise FilterError: regular expressions past their time budget.
    """

    keep: Node

    def apply(self, items: Sequence[Any]) -> list[Any]:
        return [item for item in items if self.keep(item)]

    def apply_map(self, items: Mapping[str, Any]) -> dict[str, Any]:
        return {key: item for key, item in items.items() if self.keep(item)}


def parse_filter(expression: str, shape: Shape) -> Filter:
    """Parse `expression` against the fields of `shape`; FilterError on anything wrong."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise FilterError(f"filter: expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokens(expression)
    if not tokens:
        raise FilterError("filter: the expression is empty")
    return Filter(_Parser(tokens, shape).parse())

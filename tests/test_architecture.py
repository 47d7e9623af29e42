"""The import rules of docs/architecture.md, checked on every import of the source tree.

Imports are read with `ast` (inside functions and under TYPE_CHECKING too),
resolved to `meshnode.*` names (the root folders `gossip/`, `dns/`, `ca/`,
`proxy/` and `connect/` are `meshnode.<folder>`), and matched against the
table below. A failure names the file, the line and the rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Root folders installed under another name (pyproject.toml's package-dir).
MAPPED = {"gossip", "dns", "ca", "proxy", "connect"}
SCANNED = ("meshnode", "simulations", *sorted(MAPPED))

AGENT_CODE = (
    "meshnode.agent",
    "meshnode.api",
    "meshnode.http",
    "meshnode.cli",
    "meshnode.store",
    "meshnode.catalog",
    "meshnode.intentions",
    "meshnode.events",
    "meshnode.sidecars",
)
EVERYTHING = ("meshnode",)


@dataclass(frozen=True)
class Rule:
    """Modules under `package` ("": all) must not import `forbidden`, except `allowed`;
    modules under `exempt` are not bound by the rule."""

    package: str
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    why: str = ""
    exempt: tuple[str, ...] = ()


RULES = (
    Rule("meshnode.gossip", EVERYTHING, ("meshnode.gossip",), "gossip is the bottom layer"),
    Rule(
        "meshnode.dns",
        ("meshnode.proxy", "meshnode.ca", "meshnode.gossip", "meshnode.connect", *AGENT_CODE),
        why="DNS reads the catalog only through DnsCatalog",
    ),
    Rule(
        "meshnode.proxy",
        ("meshnode.dns", "meshnode.gossip", "meshnode.connect", *AGENT_CODE),
        why="the proxy reaches the agent only through proxy/sources.py",
    ),
    Rule(
        "meshnode.ca",
        (
            "meshnode.dns",
            "meshnode.proxy",
            "meshnode.connect",
            "meshnode.sidecars",
            "meshnode.agent",
            "meshnode.api",
            "meshnode.http",
            "meshnode.cli",
        ),
        why="the data plane uses the CA, not the other way round",
    ),
    Rule(
        "meshnode.connect",
        (
            "meshnode.agent",
            "meshnode.api",
            "meshnode.http",
            "meshnode.sidecars",
            "meshnode.store",
            "meshnode.dns",
        ),
        why="native services are clients of an agent, over HTTP",
    ),
    Rule(
        "meshnode.store",
        (
            "meshnode.catalog",
            "meshnode.intentions",
            "meshnode.ca",
            "meshnode.dns",
            "meshnode.proxy",
            "meshnode.sidecars",
            "meshnode.agent",
            "meshnode.api",
            "meshnode.cli",
        ),
        why="the views build on the store",
    ),
    Rule(
        "meshnode.catalog",
        (
            "meshnode.agent",
            "meshnode.api",
            "meshnode.cli",
            "meshnode.ca",
            "meshnode.proxy",
            "meshnode.sidecars",
            "meshnode.intentions",
        ),
    ),
    Rule(
        "meshnode.intentions",
        (
            "meshnode.agent",
            "meshnode.api",
            "meshnode.cli",
            "meshnode.ca",
            "meshnode.catalog",
            "meshnode.dns",
            "meshnode.proxy",
            "meshnode.sidecars",
        ),
        why="the CA and the sidecars import the intentions",
    ),
    Rule(
        "meshnode.events",
        (
            "meshnode.agent",
            "meshnode.api",
            "meshnode.cli",
            "meshnode.ca",
            "meshnode.dns",
            "meshnode.proxy",
            "meshnode.sidecars",
        ),
    ),
    Rule(
        "meshnode.sidecars",
        ("meshnode.agent", "meshnode.api", "meshnode.http", "meshnode.cli", "meshnode.dns"),
        why="the agent hands the sidecars its objects",
    ),
    Rule(
        "meshnode.http",
        EVERYTHING,
        ("meshnode.http", "meshnode.addr", "meshnode.logs", "meshnode.per_client"),
        "HTTP is transport; endpoints are the API's",
    ),
    Rule(
        "meshnode.api",
        ("meshnode.agent", "meshnode.cli", "meshnode.gossip"),
        ("meshnode.agent.keys",),
        "the agent mounts the API",
    ),
    Rule("meshnode.agent", ("meshnode.cli",), why="only the CLI runs an agent"),
    Rule(
        "simulations",
        ("trio", *EVERYTHING),
        ("meshnode.gossip",),
        "the simulator runs the gossip cores on virtual time, without I/O",
    ),
    Rule("", ("meshnode.cli",), why="nothing imports the CLI", exempt=("meshnode.cli",)),
    Rule(
        "",
        ("meshnode.agent",),
        why="only the CLI imports the agent",
        exempt=("meshnode.agent", "meshnode.cli"),
    ),
)
# `agent.keys` is the user-facing gossip key format, read by config, API and CLI.
KEY_FORMAT = "meshnode.agent.keys"


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name a source file is imported as."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in MAPPED:
        parts.insert(0, "meshnode")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, absolute name) for every import in the file.

    `from X import y` counts as importing `X.y`: y may be a module
    (`from .. import proxy`), and a name in X is under X anyway.
    """
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package[: len(package) - node.level + 1])
                if node.module:
                    base = f"{base}.{node.module}"
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def source_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            # meshnode/gossip etc. are symlinks to the root folders: scan those once.
            relative = path.relative_to(ROOT).parts
            if relative[0] == "meshnode" and len(relative) > 1 and relative[1] in MAPPED:
                continue
            files.append(path)
    return files


def violations(path: Path, root: Path = ROOT) -> list[str]:
    name = module_name(path, root)
    found = []
    for line, target in imports(path, root):
        if _under(target, KEY_FORMAT):
            continue
        for rule in RULES:
            if not _under(name, rule.package) or any(_under(name, e) for e in rule.exempt):
                continue
            if rule.package and _under(target, rule.package):
                continue  # a package may import itself
            if any(_under(target, f) for f in rule.forbidden) and not any(
                _under(target, a) for a in rule.allowed
            ):
                where = f"{path.relative_to(root)}:{line}"
                found.append(f"{where} imports {target} ({rule.package or 'all'}: {rule.why})")
    return found


def test_every_import_follows_the_rules() -> None:
    files = source_files()
    assert len(files) > 100, "the scan found too few files: is ROOT right?"
    found = [v for path in files for v in violations(path)]
    assert found == []


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("gossip/x.py", "from ..dns import server", "meshnode.dns"),
        ("proxy/x.py", "from meshnode.agent.core import Agent", "meshnode.agent"),
        ("dns/x.py", "def f():\n    from ..ca import spiffe", "meshnode.ca"),
        ("ca/x.py", "from .. import proxy", "meshnode.proxy"),
        ("simulations/x.py", "import trio", "simulations: "),
        ("meshnode/http/x.py", "from ..catalog import catalog", "meshnode.catalog"),
        ("meshnode/api/x.py", "from ..agent.core import Agent", "meshnode.agent"),
        ("meshnode/store/x.py", "from ..intentions import rules", "meshnode.intentions"),
        ("meshnode/config.py", "from .cli import app", "nothing imports the CLI"),
        ("meshnode/client.py", "from .agent.core import Agent", "only the CLI imports the agent"),
        ("meshnode/catalog/x.py", "from ..agent import members", "meshnode.agent"),
    ],
)
def test_a_forbidden_import_is_named(
    tmp_path: Path, relative: str, source: str, expected: str
) -> None:
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    found = violations(path, tmp_path)
    assert found, f"{relative}: {source!r} passed"
    assert any(expected in v for v in found), found


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("meshnode/api/x.py", "from ..agent.keys import decode_key"),
        ("meshnode/config.py", "from .agent.keys import decode_key"),
        ("meshnode/catalog/dns_view.py", "from ..dns.catalog_view import DnsInstance"),
        ("proxy/x.py", "from ..ca.spiffe import ServiceID"),
        ("simulations/x.py", "from meshnode.gossip.store import Store"),
        ("meshnode/agent/core.py", "from .. import __version__"),
        ("meshnode/agent/core.py", "from ..api import build_router"),
        ("meshnode/cli/agent_cmd.py", "from ..agent.lifecycle import run_agent"),
    ],
)
def test_an_allowed_import_passes(tmp_path: Path, relative: str, source: str) -> None:
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert violations(path, tmp_path) == []


def test_every_package_says_what_it_owns() -> None:
    """Each package opens with a docstring (docs/architecture.md has the long form)."""
    thin = []
    for folder in SCANNED:
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
            if len(doc) < 120 or "placeholder" in doc.lower():
                thin.append(str(init.relative_to(ROOT)))
    assert thin == []

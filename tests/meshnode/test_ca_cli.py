"""`meshnode ca roots` through CliRunner against a stub agent, before and after the CA exists."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from click.testing import CliRunner, Result

import meshnode.cli.ca  # noqa: F401  (registers its commands on `cli`)
from meshnode.cli import cli
from meshnode.http import Router
from meshnode.http.router import Request, Response
from meshnode.http.testing import serve_in_thread

NO_CA = {"ActiveRootID": "", "TrustDomain": "", "Roots": []}


ROOT_ID = ":".join(f"{b:02x}" for b in range(20))
ONE_ROOT = {
    "ActiveRootID": ROOT_ID,
    "TrustDomain": "c1.mesh",
    "Roots": [
        {
            "ID": ROOT_ID,
            "Active": True,
            "NotBefore": "2026-12-05T00:00:00Z",
            "NotAfter": "2036-12-05T00:00:00Z",
            "RootCert": "-----BEGIN CERTIFICATE-----\n",
        }
    ],
}


def _serve(answer: Mapping[str, object]) -> Iterator[str]:
    async def roots(request: Request) -> Response:
        return Response.json(answer)

    router = Router()
    router.add("GET", "/v1/agent/connect/ca/roots", roots)
    with serve_in_thread(router) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture
def addr() -> Iterator[str]:
    yield from _serve(NO_CA)


@pytest.fixture
def addr_with_root() -> Iterator[str]:
    yield from _serve(ONE_ROOT)


def run(addr: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-http-addr", addr])


@pytest.mark.parametrize("extra", [[], ["--pem"]])
def test_roots_before_the_ca_exists_is_an_error_with_or_without_pem(
    addr: str, extra: list[str]
) -> None:
    # A script doing `meshnode ca roots --pem > bundle.pem` must not get an
    # empty bundle and exit 0 before any signer-eligible agent has started.
    result = run(addr, "ca", "roots", *extra)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "no CA yet" in lines[0]


def test_roots_lists_each_root_id_whole(addr_with_root: str) -> None:
    """The ID is what `ActiveRootID`, the API and the logs show: cut short, it matches nothing."""
    result = run(addr_with_root, "ca", "roots")
    assert result.exit_code == 0, result.output
    assert "Trust domain: c1.mesh" in result.stdout
    assert ROOT_ID in result.stdout
    assert "..." not in result.stdout

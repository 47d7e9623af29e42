"""`meshnode ca roots` through CliRunner against a stub agent before the CA exists."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

import meshnode.cli.ca  # noqa: F401  (registers its commands on `cli`)
from meshnode.cli import cli
from meshnode.http import Router
from meshnode.http.router import Request, Response
from meshnode.http.testing import serve_in_thread

NO_CA = {"ActiveRootID": "", "TrustDomain": "", "Roots": []}


@pytest.fixture
def addr() -> Iterator[str]:
    async def roots(request: Request) -> Response:
        return Response.json(NO_CA)

    router = Router()
    router.add("GET", "/v1/agent/connect/ca/roots", roots)
    with serve_in_thread(router) as port:
        yield f"127.0.0.1:{port}"


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

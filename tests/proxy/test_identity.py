"""Who may reach an inbound listener: real clients (plain TCP, `openssl s_client`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from meshnode.proxy.testing import StaticAuthorizer, TestCA
from tests.proxy.conftest import HOST, read_all, running_pair, serve

BANNER = b"hello-from-db"
_DEADLINE_S = 15.0

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


async def banner(stream: trio.SocketStream) -> None:
    """Greet at once, so a client that got through sees it without sending anything."""
    try:
        await stream.send_all(BANNER + b"\n")
        await stream.receive_some(1024)
    except trio.BrokenResourceError:
        pass


def _write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


async def s_client(port: int, directory: Path, args: list[str]) -> bytes:
    """stdout of `openssl s_client` connected for half a second (stdin open that long)."""
    command = (
        f"sleep 0.5 | openssl s_client -connect {HOST}:{port} -tls1_3 -quiet -no_ign_eof "
        f"-CAfile {directory / 'roots.pem'} " + " ".join(args)
    )
    with trio.fail_after(10):
        result = await trio.run_process(
            ["sh", "-c", command], capture_stdout=True, capture_stderr=True, check=False
        )
    return result.stdout


async def test_only_a_certificate_from_our_ca_reaches_the_inbound_listener(
    ca: TestCA, other_ca: TestCA, tmp_path: Path
) -> None:
    web = ca.material("web")
    stranger = other_ca.material("web")  # same name and trust domain, another root
    _write(tmp_path, "roots.pem", ca.root.cert_pem)
    good = ["-cert", _write(tmp_path, "web.pem", web.cert_chain_pem)]
    good += ["-key", _write(tmp_path, "web.key", web.key_pem)]
    good += ["-cert_chain", _write(tmp_path, "web-chain.pem", web.cert_chain_pem)]
    bad = ["-cert", _write(tmp_path, "x.pem", stranger.cert_chain_pem)]
    bad += ["-key", _write(tmp_path, "x.key", stranger.key_pem)]
    bad += ["-cert_chain", _write(tmp_path, "x-chain.pem", stranger.cert_chain_pem)]
    authorizer = StaticAuthorizer()
    async with running_pair(ca, authorizer=authorizer, deadline_s=_DEADLINE_S) as pair:
        db = await pair.add_db(await serve(pair.nursery, banner))
        assert db.inbound_port is not None
        port = db.inbound_port

        check = await trio.open_tcp_stream(HOST, port)  # a TCP health check
        await check.aclose()
        plain = await trio.open_tcp_stream(HOST, port)
        async with plain:
            await plain.send_all(b"GET / HTTP/1.0\r\n\r\n")
            assert BANNER not in await read_all(plain)

        assert BANNER not in await s_client(port, tmp_path, [])  # no certificate
        assert BANNER not in await s_client(port, tmp_path, bad)  # another CA
        assert BANNER in await s_client(port, tmp_path, good)
        authorizer.set("web", "db", False)
        assert BANNER not in await s_client(port, tmp_path, good)  # denied
        inbound = db.snapshot()["Inbound"]
        assert inbound["HandshakeFailed"] == 3
        with trio.fail_after(2):  # the check's close is seen after its accept
            while db.snapshot()["Inbound"]["ClosedEarly"] != 1:
                await trio.sleep(0.01)
        assert inbound["Denied"] == 1

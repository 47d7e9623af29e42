"""/v1/operator/keyring: list (GET), install (POST), use (PUT), remove (DELETE).

Shapes are Consul's: the list is ``[{"WAN": false, "Datacenter": "dc1", "Segment": "",
"Keys": {key: count}, "PrimaryKeys": {key: count}, "NumNodes": n, "Messages": {}}]``
and writes take ``{"Key": "<base64>"}`` and answer an empty 200. The list shows
the keys themselves, so with an agent token it needs the token, like a write. A write that some
nodes refused answers 500 naming them, so rotation never fails silently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..agent.keys import KeyFormatError, decode_key
from ..http import HttpError, Request, Response, Router
from .bodies import object_body, string_field
from .errors import facade_errors
from .facade import AgentFacade, KeyringReport

__all__ = ["keyring_json", "register_keyring_routes"]


def keyring_json(report: KeyringReport) -> dict[str, Any]:
    """One entry of Consul's keyring list response."""
    return {
        "WAN": False,
        "Datacenter": report.datacenter,
        "Segment": "",
        "Keys": dict(report.keys),
        "PrimaryKeys": dict(report.primary_keys),
        "NumNodes": report.num_nodes,
        "Messages": dict(report.messages),
    }


def _key_from(request: Request) -> str:
    data = object_body(request, allowed={"Key"}, required={"Key"})
    key = string_field(data, "Key")
    try:
        decode_key(key)
    except KeyFormatError as exc:
        raise HttpError(400, str(exc)) from None
    return key


def _check(operation: str, report: KeyringReport) -> Response:
    if not report.messages:
        return Response.empty()
    failures = "; ".join(f"{node}: {msg}" for node, msg in sorted(report.messages.items()))
    raise HttpError(
        500,
        f"keyring {operation} failed on {len(report.messages)} of {report.num_nodes} nodes: "
        f"{failures}",
    )


def register_keyring_routes(router: Router, agent: AgentFacade) -> None:
    """Add /v1/operator/keyring backed by `agent`."""

    async def list_keys(request: Request) -> Response:
        with facade_errors():
            report = await agent.keyring_list()
        return Response.json([keyring_json(report)])

    def write(
        operation: str, call: Callable[[str], Awaitable[KeyringReport]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            key = _key_from(request)
            with facade_errors():
                report = await call(key)
            return _check(operation, report)

        return handler

    # The list holds the keys themselves: whoever reads them can join the pool.
    router.add("GET", "/v1/operator/keyring", list_keys, secret=True)
    router.add("POST", "/v1/operator/keyring", write("install", agent.keyring_install))
    router.add("PUT", "/v1/operator/keyring", write("use", agent.keyring_use))
    router.add("DELETE", "/v1/operator/keyring", write("remove", agent.keyring_remove))

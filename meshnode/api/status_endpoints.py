"""The endpoints tools probe to see whether the cluster is up, in Consul's shapes.

meshnode has no Raft and no servers, so each answer says what the question
means here (docs/http-api.md, "Status"):

- ``GET /v1/status/leader``: ``"ip:port"`` (a JSON string) of the first
  elected signer, as this agent sees the member list: the signer that keeps
  the CA's house (retires intermediates, prunes roots). With no signer elected
  it is this agent's own gossip address: every agent serves every read, so
  the agent a tool asks is never without an answer. Never ``""``, which
  Consul's clients read as "no leader: the cluster is down".
- ``GET /v1/status/peers``: the elected signers' addresses, best first;
  this agent's own when none is elected.
- ``GET /v1/catalog/datacenters``: ``[our datacenter]``; an agent knows no other.
- ``/v1/catalog/register`` and ``/deregister`` are refused with 405 and a
  reason: in meshnode a service belongs to the agent that runs its checks
  (``/v1/agent/service/register`` on that host), and a catalog entry written
  for another node would have no agent to check it or to remove it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..http import HttpError, Request, Response, Router

__all__ = ["CATALOG_WRITE_REFUSAL", "register_status_routes"]

CATALOG_WRITE_REFUSAL = (
    "meshnode has no catalog writes: a service belongs to the agent that runs its checks;"
    " register it there with PUT /v1/agent/service/register"
    " (and remove it with /v1/agent/service/deregister/<id>)"
)


def register_status_routes(
    router: Router,
    *,
    servers: Callable[[], list[str]],
    own_address: Callable[[], str],
    datacenter: str,
) -> None:
    """Add the probe endpoints; `servers` gives the elected signers' "ip:port", best first."""

    def peers() -> list[str]:
        return servers() or [own_address()]

    async def leader(request: Request) -> Response:
        return Response.json(peers()[0])

    async def status_peers(request: Request) -> Response:
        return Response.json(peers())

    async def datacenters(request: Request) -> Response:
        return Response.json([datacenter])

    async def catalog_write(request: Request) -> Response:
        # RFC 9110: an empty Allow says that the resource allows no method at all.
        raise HttpError(405, CATALOG_WRITE_REFUSAL, headers=[("Allow", "")])

    router.add("GET", "/v1/status/leader", leader)
    router.add("GET", "/v1/status/peers", status_peers)
    router.add("GET", "/v1/catalog/datacenters", datacenters)
    for path in ("/v1/catalog/register", "/v1/catalog/deregister"):
        router.add(["GET", "PUT", "POST", "DELETE"], path, catalog_write)

"""`meshnode event` and `meshnode watch`: Consul's user event commands over /v1/event.

- ``meshnode event -name NAME [-node RE] [-service RE] [-tag RE] [PAYLOAD]``
  fires an event and prints ``Event ID: <id>``, as ``consul event`` does.
- ``meshnode watch -type event [-name NAME] [HANDLER...]`` long-polls
  /v1/event/list. Each time new events arrive it prints them as a JSON array
  (the first answer includes the events already buffered, as Consul's first
  watch invocation does); with HANDLER it runs ``sh -c HANDLER`` with that
  JSON on stdin instead. ``-type key -key K`` watches one KV key the same way
  (the entry's JSON object, or ``null`` once it is gone). Ctrl-C exits 0.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections import OrderedDict
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import click

from ..client import AgentClient, ClientError
from .app import cli
from .options import http_addr_option

__all__ = ["event", "watch"]

WATCH_TYPES = ("event", "key")
# How long one long poll waits at the agent (Consul's watch uses its 5 min default).
WATCH_WAIT_S = 300
# The socket gives up this long after the agent should have answered.
WATCH_SLACK_S = 30
# After a failed poll, wait this long, doubling up to the maximum (Consul's watch backs off).
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# Event ids already printed, to print only new ones; above the agent's 256-event buffer.
SEEN_MAX_IDS = 1024


@cli.command("event")
@http_addr_option
@click.option("--name", required=True, metavar="NAME", help="Event name.")
@click.option("--node", default="", metavar="REGEXP", help="Only nodes whose name matches.")
@click.option("--service", default="", metavar="REGEXP", help="Only nodes with a matching service.")
@click.option("--tag", default="", metavar="REGEXP", help="With --service: only matching tags.")
@click.argument("payload", required=False, default="")
def event(
    http_addr: str | None, name: str, node: str, service: str, tag: str, payload: str
) -> None:
    """Fire a user event to every agent (best effort, like serf's), PAYLOAD <= 512 bytes."""
    filters = {k: v for k, v in (("node", node), ("service", service), ("tag", tag)) if v}
    path = f"/v1/event/fire/{quote(name, safe='')}"
    if filters:
        path += "?" + urlencode(filters)
    client = AgentClient.from_flag(http_addr)
    status, data = client.request_raw("PUT", path, payload.encode("utf-8"))
    if status == 404:
        raise ClientError(f"the agent at {client.addr} has no /v1/event API")
    fired = _json(data, client)
    if not isinstance(fired, dict) or not isinstance(fired.get("ID"), str):
        raise ClientError(f"unexpected answer from {path}: no event ID")
    click.echo(f"Event ID: {fired['ID']}")


@cli.command("watch", context_settings={"allow_interspersed_args": False})
@http_addr_option
@click.option(
    "--type", "watch_type", required=True, metavar="TYPE", help="What to watch: event or key."
)
@click.option("--name", default="", metavar="NAME", help="-type event: only this event name.")
@click.option("--key", default="", metavar="KEY", help="-type key: the key to watch.")
@click.argument("handler", nargs=-1)
def watch(
    http_addr: str | None, watch_type: str, name: str, key: str, handler: tuple[str, ...]
) -> int:
    """Print (or pass to HANDLER on stdin) the JSON of each change, until Ctrl-C."""
    if watch_type not in WATCH_TYPES:
        raise click.UsageError(
            f"unsupported watch type {watch_type!r}: meshnode supports "
            + " and ".join(f"-type {t}" for t in WATCH_TYPES)
        )
    if watch_type == "key" and not key:
        raise click.UsageError("-type key needs -key KEY")
    client = AgentClient.from_flag(http_addr, timeout_s=WATCH_WAIT_S + WATCH_SLACK_S)
    if watch_type == "event":
        path = "/v1/event/list" + (f"?{urlencode({'name': name})}" if name else "")
        changes: _Changes = _EventChanges()
    else:
        path = f"/v1/kv/{quote(key, safe='/')}"
        changes = _KeyChanges()
    try:
        _watch_loop(client, path, changes, " ".join(handler))
    except KeyboardInterrupt:
        return 0
    return 0


class _Changes(Protocol):
    def update(self, status: int, body: Any, index_moved: bool) -> list[Any]:
        """What one poll's answer gives to hand out (nothing when it did not change)."""
        ...


class _EventChanges:
    """Hands out the events not seen before, as one JSON array."""

    def __init__(self) -> None:
        self.seen: OrderedDict[str, None] = OrderedDict()

    def update(self, status: int, body: Any, index_moved: bool) -> list[Any]:
        if not isinstance(body, list):
            raise ClientError("unexpected answer from /v1/event/list: not a JSON list")
        new = [e for e in body if isinstance(e, dict) and str(e.get("ID")) not in self.seen]
        for e in new:
            self.seen[str(e.get("ID"))] = None
        while len(self.seen) > SEEN_MAX_IDS:
            self.seen.popitem(last=False)
        return [new] if new else []


class _KeyChanges:
    """Hands out the key's entry (or None once deleted) at start and when its index moves."""

    def __init__(self) -> None:
        self.first = True

    def update(self, status: int, body: Any, index_moved: bool) -> list[Any]:
        if not (self.first or index_moved):
            return []
        self.first = False
        if status == 404 or not isinstance(body, list) or not body:
            return [None]
        return [body[0]]


def _watch_loop(client: AgentClient, path: str, changes: _Changes, handler: str) -> None:
    index = 0
    delay_s = RETRY_FIRST_S
    first = True
    while True:
        sep = "&" if "?" in path else "?"
        query = f"{sep}index={index}&wait={WATCH_WAIT_S}s" if index else ""
        try:
            status, body, new_index = _poll(client, path + query)
        except ClientError as exc:
            if first:
                raise
            click.echo(f"Error: {exc} (retrying in {delay_s:g} s)", err=True)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)
            continue
        first = False
        delay_s = RETRY_FIRST_S
        # The new index is taken as is: one lower than ours means the agent
        # restarted, and asking with its own index starts the wait afresh.
        moved = new_index != index
        index = new_index
        for item in changes.update(status, body, moved):
            _hand_out(json.dumps(item, indent=4), handler)


def _hand_out(text: str, handler: str) -> None:
    """Print `text`, or run the handler with it on stdin (its failure is reported, not fatal)."""
    if not handler:
        click.echo(text)
        return
    done = subprocess.run(["/bin/sh", "-c", handler], input=text.encode("utf-8"), check=False)
    if done.returncode != 0:
        click.echo(f"Error: handler {handler!r} exited with {done.returncode}", err=True)


def _poll(client: AgentClient, path: str) -> tuple[int, Any, int]:
    """One GET: (status, decoded JSON or None, X-Consul-Index); `ClientError` on failure.

    `AgentClient.request_raw` does not give headers, and a blocking query
    needs the index header, hence this one plain request.
    """
    conn = http.client.HTTPConnection(client.host, client.port, timeout=client.timeout_s)
    headers = {"X-Consul-Token": client.token} if client.token else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        data = response.read()
        index_text = response.getheader("X-Consul-Index") or "0"
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ClientError(f"cannot talk to the agent at {client.addr}: {reason}") from None
    finally:
        conn.close()
    if response.status >= 400 and response.status != 404:
        raise ClientError(f"the agent answered {response.status} to GET {path}")
    if response.status == 404 and path.startswith("/v1/event/"):
        raise ClientError(f"the agent at {client.addr} has no /v1/event API")
    index = int(index_text) if index_text.isdigit() else 0
    body = _json(data, client) if response.status != 404 else None
    return response.status, body, index


def _json(data: bytes, client: AgentClient) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ClientError(f"the agent at {client.addr} sent a reply that is not JSON") from None

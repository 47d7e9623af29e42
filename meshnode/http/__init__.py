"""The agent's HTTP/1.1 server (trio + h11) and its router: transport only, no endpoints.

`server.serve_http` serves a `router.Router` with per-connection limits;
`testing` has a small client for tests. Must not import the API, the agent,
or any subsystem: it knows requests and responses, not what they mean.
"""

from .router import Guard, Handler, HttpError, Request, Response, Router, json_text, parse_uint
from .server import HttpBindError, HttpLimits, serve_http

__all__ = [
    "Guard",
    "Handler",
    "HttpBindError",
    "HttpError",
    "HttpLimits",
    "Request",
    "Response",
    "Router",
    "json_text",
    "parse_uint",
    "serve_http",
]

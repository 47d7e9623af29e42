"""The agent's HTTP/1.1 server (trio + h11) and its router."""

from .router import Guard, Handler, HttpError, Request, Response, Router, parse_uint
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
    "parse_uint",
    "serve_http",
]

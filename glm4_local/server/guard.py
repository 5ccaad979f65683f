"""What a web page in the user's browser could send, refused before any route sees it.

Any page the user visits can send requests to 127.0.0.1: a "simple" cross-origin POST (text/plain or a
form) needs no CORS preflight, and DNS rebinding lets a page on a name the attacker controls reach the
server as if it were its own origin. So: a request whose Host is a name other than localhost or one the
user allowed is refused (421), a cross-origin Origin not allowed by --cors-origin is refused (403), and a
POST body must be application/json (415).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
LOCAL_NAMES = frozenset({"localhost"})


def host_name(value: str) -> str | None:
    """The name or address in a Host header or an origin's authority, without the port."""
    try:
        return urlsplit(f"//{value}").hostname
    except ValueError:
        return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(origin: str, host_header: str) -> bool:
    """Whether a page at `origin` is this server's own (same host and port); "null" and the rest are not."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.lower()


class BrowserGuard:
    """ASGI middleware; see the module docstring. `allowed_hosts`: names besides localhost and IP
    addresses (an address in Host cannot come from DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.names = LOCAL_NAMES | {h.lower() for h in allowed_hosts}
        self.any_origin = "*" in cors_origins
        self.origins = {o.rstrip("/").lower() for o in cors_origins}

    def host_allowed(self, name: str | None) -> bool:
        return name is not None and (name.lower() in self.names or _is_ip(name))

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        if self.any_origin or origin.rstrip("/").lower() in self.origins:
            return True
        return same_origin(origin, host_header)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = host_name(headers.get("host", ""))
        refusal = None
        if not self.host_allowed(host):
            refusal = (421, "this server answers only requests to localhost, an IP address or a name given with "
                            "--allowed-host (a Host of another name is how DNS rebinding reaches local servers)",
                       "host_not_allowed")
        elif "origin" in headers and not self.origin_allowed(headers["origin"], headers.get("host", "")):
            refusal = (403, f"requests from web pages at {headers['origin']} are not allowed (see --cors-origin)",
                       "origin_not_allowed")
        elif scope["method"] == "POST" and headers.get("content-type", "").split(";")[0].strip().lower() \
                != "application/json":
            refusal = (415, "a POST body must be sent as Content-Type: application/json", "unsupported_media_type")
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message, code = refusal
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": code}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

"""Fetching a web page for the model, safely: http/https only, a deadline, a size cap, bounded redirects,
and never an address on the user's own machine or network (loopback, private, link-local, ...) unless
the user allowed it. Each hop's name is resolved once, checked, and that very address is connected to,
so a name that resolves differently the second time (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

TIMEOUT = 10.0  # the demo's page timeout
MAX_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "Mozilla/5.0 (compatible; glm4-local simple_browser)"
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown", "application/xml", "text/xml")


class FetchError(Exception):
    """Why a page could not be had (one line, for the model's error observation)."""


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    content_type: str
    body: bytes

    def text(self) -> str:
        charset = "utf-8"
        for part in self.content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


def refused_address(address: str) -> bool:
    """An address on this machine or a private network (IPv4-mapped IPv6 addresses included)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _resolve(host: str, port: int, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError(f"cannot resolve {host}: {e}") from None
    addresses = [info[4][0] for info in infos]
    if not allow_private:
        refused = [a for a in addresses if refused_address(a)]
        if refused:  # one private answer is enough to refuse: the model must not reach the user's network
            raise FetchError(f"{host} is a local or private address ({refused[0]}); not fetched")
    return addresses[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


def _one_hop(url: str, deadline: float, allow_private: bool, max_bytes: int) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https addresses are fetched, not {url[:80]!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timed out")
    address = _resolve(parts.hostname, port, allow_private)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    connection = kind(address, parts.hostname, port, left)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "text/html,*/*;q=0.5",
                                                 "Accept-Encoding": "identity"})
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        body = bytearray()
        while chunk := response.read(65536):
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"the page is larger than {max_bytes // 1024 // 1024} MiB")
            if time.monotonic() > deadline:
                raise FetchError("timed out")
        return response.status, headers, bytes(body)
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(str(e) or type(e).__name__) from None
    finally:
        connection.close()


def fetch(url: str, allow_private: bool = False, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES,
          types: tuple[str, ...] = TEXT_TYPES) -> Fetched:
    """The page at `url` (following up to MAX_REDIRECTS redirects, each checked like the first)."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        status, headers, body = _one_hop(url, deadline, allow_private, max_bytes)
        if status in (301, 302, 303, 307, 308) and headers.get("location"):
            url = urljoin(url, headers["location"])
            continue
        if status >= 400:
            raise FetchError(f"HTTP {status}")
        content_type = headers.get("content-type", "text/html")
        if content_type.split(";")[0].strip().lower() not in types:
            raise FetchError(f"not a text page ({content_type.split(';')[0]})")
        return Fetched(url, content_type, body)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")

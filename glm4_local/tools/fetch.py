"""Fetching a web page for the model, safely: http/https only, a deadline, a size cap, bounded redirects,
and never an address on the user's own machine or network (loopback, private, link-local, ...) unless
the user allowed it. Each hop's name is resolved once, checked, and that very address is connected to,
so a name that resolves differently the second time (DNS rebinding) cannot slip through. An IPv6 address
that carries an IPv4 one (mapped, compatible, NAT64, 6to4, Teredo) is judged by the IPv4 address.

The deadline holds for the whole fetch, whatever the server does: the name's lookup is waited for at most
until then, and at the deadline the connection is shut, which ends any read under way (a server that
trickles its headers or its body a byte at a time gains nothing).
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
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
        """The body decoded by the charset the page names, when that is a text encoding a page may use;
        else (or when it fails) as UTF-8, bad bytes replaced."""
        charset = "utf-8"
        for part in self.content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip().strip('"').strip("'")
        try:
            name = codecs.lookup(charset).name
            if name in NOT_PAGE_CHARSETS or not getattr(codecs.lookup(charset), "_is_text_encoding", True):
                raise LookupError(charset)
            return self.body.decode(name, errors="replace")
        except (LookupError, UnicodeError, ValueError):
            return self.body.decode("utf-8", errors="replace")


# codecs Python has that no web page is in, whose decoders raise or read escapes instead of text
NOT_PAGE_CHARSETS = {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "utf-7"}
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, compatible (::a.b.c.d), NAT64, 6to4, Teredo."""
    found = [ip.ipv4_mapped] if ip.ipv4_mapped is not None else []
    if int(ip) >> 32 == 0 and int(ip) > 1:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if any(ip in network for network in NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    return found


def refused_address(address: str) -> bool:
    """An address on this machine or a private network, or an IPv6 one that carries such an IPv4 one."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and (carried := embedded_ipv4(ip)):
        return any(refused_address(str(v4)) for v4 in carried)
    return not ip.is_global or ip.is_multicast


_LOOKUPS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="glm4-local-dns")


def _resolve(host: str, port: int, allow_private: bool, deadline: float) -> str:
    lookup = _LOOKUPS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=max(deadline - time.monotonic(), 0.001))
    except concurrent.futures.TimeoutError:
        raise FetchError("timed out") from None
    except (socket.gaierror, UnicodeError, ValueError) as e:
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


@contextlib.contextmanager
def _shut_at(deadline: float, connection: http.client.HTTPConnection) -> Iterator[threading.Event]:
    """Shut the connection's socket at the deadline (ending a read under way); the event says it was."""
    fired = threading.Event()

    def shut() -> None:
        fired.set()
        with contextlib.suppress(OSError, AttributeError):
            connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    timer = threading.Timer(max(deadline - time.monotonic(), 0), shut)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an address that may be fetched."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range, a broken IPv6 literal
        raise FetchError(f"not a valid address: {url[:80]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https addresses are fetched, not {url[:80]!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def _one_hop(url: str, deadline: float, allow_private: bool, max_bytes: int) -> tuple[int, dict[str, str], bytes]:
    scheme, host, port, path = _target(url)
    if deadline - time.monotonic() <= 0:
        raise FetchError("timed out")
    address = _resolve(host, port, allow_private, deadline)
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timed out")
    connection = (_PinnedHTTPS if scheme == "https" else _PinnedHTTP)(address, host, port, left)
    with _shut_at(deadline, connection) as fired:
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
            if fired.is_set():
                raise FetchError("timed out")
            return response.status, headers, bytes(body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise FetchError("timed out" if fired.is_set() else str(e) or type(e).__name__) from None
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

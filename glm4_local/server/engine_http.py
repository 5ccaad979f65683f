"""One streamed POST to an engine, on asyncio's own streams.

A reply streams a chunk per token; httpx (through anyio) stops and restarts reading its socket for every
chunk, two epoll calls and their Python each time, which on a 2-core machine beside the engine cost it 14%
of its tokens/s. This reads the socket as asyncio does (its buffer fills while we work) and parses only what
llama-server sends: a status line, headers, and a body of HTTP/1.1 chunks or of a given length.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_LINE = 8 * 2**20  # the longest line (a stream chunk's JSON) or HTTP chunk an engine may send
MAX_HEADERS = 100


class StreamCut(ConnectionError):
    """The connection closed early, or the engine sent what HTTP/1.1 does not allow."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they come."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while size := _chunk_size(await self.reader.readline()):
                yield await _exactly(self.reader, size)
                await _exactly(self.reader, 2)
            return
        length = self.headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_LINE:
                raise StreamCut(f"a body of {length[:20]} bytes")
            yield await _exactly(self.reader, int(length))
            return
        while data := await self.reader.read(65536):
            yield data

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines (without their line ends), each whole."""
        pending = b""
        async for data in self.chunks():
            pending += data
            *whole, pending = pending.split(b"\n")
            for line in whole:
                yield line.rstrip(b"\r")
            if len(pending) > MAX_LINE:
                raise StreamCut("a line longer than 8 MiB")
        if pending:
            yield pending

    async def body(self, limit: int = 65536) -> bytes:
        data = b""
        async for piece in self.chunks():
            data += piece
            if len(data) >= limit:
                break
        return data[:limit]


def _chunk_size(line: bytes) -> int:
    if not line.endswith(b"\n"):
        raise StreamCut("the connection closed mid-reply")
    try:
        size = int(line.split(b";")[0].strip(), 16)
    except ValueError:
        raise StreamCut("a chunk size that is not one") from None
    if size > MAX_LINE:
        raise StreamCut("a chunk larger than 8 MiB")
    return size


async def _exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise StreamCut("the connection closed mid-reply") from None


@contextlib.asynccontextmanager
async def post(url: str, path: str, body: bytes, headers: dict[str, str], connect_seconds: float
               ) -> AsyncIterator[Reply]:
    """POST `body` to `url` + `path`; the reply once its headers are in. Leaving the block closes the connection
    (an engine stops a generation whose client is gone). OSError (StreamCut among them) on failure."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connecting = asyncio.open_connection(parts.hostname, port, ssl=True if parts.scheme == "https" else None,
                                         limit=MAX_LINE)
    try:
        reader, writer = await asyncio.wait_for(connecting, connect_seconds)
    except asyncio.TimeoutError:  # not yet the built-in TimeoutError on Python 3.10
        raise StreamCut(f"no connection in {connect_seconds:g} s") from None
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        yield await _reply(reader)
    finally:
        writer.close()


async def _reply(reader: asyncio.StreamReader) -> Reply:
    status_line = await reader.readline()
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
        raise StreamCut("the connection closed before a reply" if not status_line else "a reply that is not HTTP")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise StreamCut("the connection closed mid-headers")
        if not line.strip():
            return Reply(int(fields[1]), headers, reader)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise StreamCut(f"more than {MAX_HEADERS} headers")

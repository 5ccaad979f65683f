"""An MCP server over stdin/stdout, bounded: the transport the official SDK's `stdio_client` would be, but
what the server sends (a tool's result may carry a whole web page) costs time linear in it and memory of
at most MAX_MESSAGE_BYTES a message, and the server never outlives glm4-local.

- A line over MAX_MESSAGE_BYTES is not kept: it is read past, and the request it answers (its `id`, read
  from the line's start) gets a JSON-RPC error saying so, so the call ends at once instead of waiting for
  its timeout. (The SDK's reader joins and splits its whole buffer again for every chunk of a line.)
- The server runs in a session of its own and, on Linux, dies with the thread that started it (the MCP
  thread, which ends with glm4-local, however glm4-local ends); leaving ends its whole process group.
- Its stderr is kept as its last lines only (for the line that says why it failed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
READ_CHUNK = 64 * 1024
STOP_GRACE = 2.0  # seconds the server has to leave once its stdin closes
STDERR_LINES = 20
ID_AT_START = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,20})')
_PR_SET_PDEATHSIG = 1


def _dies_with_parent() -> None:
    """In the child: killed when the thread that started it ends (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _too_large(start: bytes) -> dict[str, Any] | None:
    """The error answering the request whose reply was too large (None: no id to answer)."""
    found = ID_AT_START.search(start)
    if found is None:
        return None
    return {"jsonrpc": "2.0", "id": json.loads(found.group(1)),
            "error": {"code": -32603, "message": f"the server's reply was larger than "
                                                 f"{MAX_MESSAGE_BYTES // 2**20} MiB and was not read"}}


class _Lines:
    """Lines of a stream, each read once: a line over the limit is skipped, keeping only its start."""

    def __init__(self) -> None:
        self.line = bytearray()
        self.skipping = False
        self.start = b""

    def feed(self, chunk: bytes) -> list[bytes | dict[str, Any] | None]:
        """Whole lines (bytes), or for a line too long what answers it (dict, or None when nothing can)."""
        found: list[bytes | dict[str, Any] | None] = []
        pos = 0
        while (end := chunk.find(b"\n", pos)) >= 0:
            self._take(chunk[pos:end])
            found.append(_too_large(self.start) if self.skipping else bytes(self.line))
            self.line, self.skipping, self.start = bytearray(), False, b""
            pos = end + 1
        self._take(chunk[pos:])
        return found

    def _take(self, piece: bytes) -> None:
        if self.skipping:
            return
        self.line += piece
        if len(self.line) > MAX_MESSAGE_BYTES:
            self.skipping, self.start, self.line = True, bytes(self.line[:512]), bytearray()


@contextlib.asynccontextmanager
async def bounded_stdio(command: str, args: list[str], env: dict[str, str]) -> AsyncIterator[Any]:
    """(read stream, write stream) of SessionMessages, as an SDK transport yields them."""
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    process = await asyncio.create_subprocess_exec(
        command, *args, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=_dies_with_parent)
    to_session, read_stream = anyio.create_memory_object_stream[Any](16)
    write_stream, from_session = anyio.create_memory_object_stream[Any](16)
    stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)

    async def read_stdout() -> None:
        assert process.stdout is not None
        lines = _Lines()
        async with to_session:
            while chunk := await process.stdout.read(READ_CHUNK):
                for line in lines.feed(chunk):
                    if line is None:
                        continue
                    try:
                        text = line if isinstance(line, bytes) else json.dumps(line).encode()
                        item: Any = SessionMessage(types.jsonrpc_message_adapter.validate_json(text, by_name=False))
                    except ValueError as e:
                        item = e
                    await to_session.send(item)

    async def read_stderr() -> None:
        assert process.stderr is not None
        lines = _Lines()
        while chunk := await process.stderr.read(READ_CHUNK):
            stderr.extend(line.decode(errors="replace")[:300] for line in lines.feed(chunk) if isinstance(line, bytes))

    async def write_stdin() -> None:
        assert process.stdin is not None
        async with from_session:
            async for message in from_session:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                process.stdin.write(data.encode())
                await process.stdin.drain()

    tasks = [asyncio.ensure_future(job()) for job in (read_stdout, read_stderr, write_stdin)]
    try:
        yield read_stream, write_stream, stderr
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(process)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Close its stdin, give it STOP_GRACE s, then kill its whole process group."""
    if process.stdin is not None:
        with contextlib.suppress(OSError, RuntimeError):
            process.stdin.close()
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
        await asyncio.wait_for(process.wait(), STOP_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
        await asyncio.wait_for(process.wait(), STOP_GRACE)

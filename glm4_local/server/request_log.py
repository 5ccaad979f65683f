"""One line per request, as llama-server and Ollama log them: who, method, route, status, tokens, time.

Written by a thread of its own from a bounded queue: a log nobody reads (a full pipe) never stalls the
event loop; lines past the bound are dropped and counted.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_WAITING = 1000  # lines


@dataclass
class RequestUsage:
    """Where a route leaves the request's token counts (its run's usage, read when the response ends)."""

    usage: Callable[[], dict[str, Any]] | None = None


class LineWriter:
    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._lines: queue.Queue[str | None] = queue.Queue(MAX_WAITING)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="glm4-local-request-log", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (line := self._lines.get()) is not None:
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                self._write(f"({dropped} request log lines dropped: the log was not being read)")
            self._write(line)

    def close(self) -> None:
        try:
            self._lines.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout=2)


def _tokens(usage: RequestUsage) -> str:
    try:
        counts = usage.usage() if usage.usage else None
    except Exception:  # a log line is never worth failing a request
        counts = None
    if not counts:
        return ""
    return f" · {counts.get('prompt_tokens', 0)} + {counts.get('completion_tokens', 0)} tokens"


class RequestLog:
    """ASGI middleware: the line is written when the response has ended (a stream too)."""

    def __init__(self, app: Any, writer: LineWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [0]
        usage = RequestUsage()
        scope.setdefault("state", {})["glm4_usage"] = usage

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            self.writer.put(f"{client[0]} {scope['method']} {scope['path']} {status[0] or '-'}{_tokens(usage)} · "
                            f"{time.monotonic() - started:.2f} s")


class EndsWhenStopped:
    """ASGI middleware: a request the server cancels as it stops, past the seconds it gives running requests
    (a stream waiting on a tool's cell, a long reply), ends there. Uvicorn says so in one line; the traceback
    it would print of the cancellation tells a user nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if scope["type"] != "http":
                raise

"""The server's own tools (`serve --python/--browser/--mcp`): one toolbox per conversation id.

A conversation's Python kernel, its /mnt/data folder and its browser's open pages belong to the id the
client sends (`conversation_id`); another id never sees them. A conversation idle for `idle_seconds`
is ended (kernel stopped, folder removed), by a reaper thread even when no other request comes, and so
is the least recently used one when more than `max_conversations` are open. A request without an id gets
a toolbox of its own, ended with the request. MCP servers are shared by every conversation: they are the
user's own programs, started once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from glm4_local.tools.mcp_servers import McpServers
from glm4_local.tools.observation import Tool
from glm4_local.tools.toolbox import Toolbox

DEFAULT_IDLE_SECONDS = 15 * 60.0
DEFAULT_MAX_CONVERSATIONS = 32
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OpenTools = Callable[[Path], dict[str, Tool]]  # a conversation's data folder -> its built-in tools


class UnknownConversation(Exception):
    """No open conversation has this id (never had one, or it ended)."""


@dataclass
class ToolSession:
    conversation: str
    toolbox: Toolbox
    data_dir: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one request of a conversation at a time
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0

    def close(self) -> None:
        for tool in self.toolbox.built_in.values():  # the shared MCP servers stay
            with contextlib.suppress(Exception):
                tool.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ToolSessions:
    def __init__(self, open_tools: OpenTools, enabled: tuple[str, ...], mcp: McpServers | None = None,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS, max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
                 root: Path | None = None) -> None:
        self.open_tools = open_tools
        self.enabled = enabled  # the built-in tool types the server runs (python, simple_browser)
        self.mcp = mcp
        self.idle_seconds = idle_seconds
        self.max_conversations = max_conversations
        self.root = root or Path(tempfile.mkdtemp(prefix="glm4-local-serve-"))
        self.sessions: dict[str, ToolSession] = {}
        self.guard = threading.Lock()
        self.closed = False
        self.stopping = threading.Event()
        self.reaper: threading.Thread | None = None

    # -- what the server runs -------------------------------------------------------------------------
    def offered(self) -> list[dict[str, Any]]:
        """The tools a client may list to have them run here: built-in types, then MCP functions."""
        return [{"type": kind} for kind in self.enabled] + (list(self.mcp.functions) if self.mcp else [])

    def runs_any(self, tools: list[dict[str, Any]] | None) -> bool:
        """Whether a request's tools include one this server runs (else its calls go back to the client)."""
        return any(self.runs(t) for t in tools or [])

    def runs(self, tool: dict[str, Any]) -> bool:
        if tool.get("type") in self.enabled:
            return True
        function = tool.get("function") if tool.get("type") == "function" else None
        return bool(self.mcp and isinstance(function, dict) and self.mcp.answers(str(function.get("name"))))

    # -- conversations --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def session(self, conversation: str | None) -> AsyncIterator[ToolSession]:
        """The conversation's toolbox, held for one request (others of the same id wait)."""
        session = await run_in_threadpool(self._acquire, conversation)
        try:
            async with session.lock:
                yield session
        finally:
            with self.guard:
                session.users -= 1
                session.last_used = time.monotonic()
            if conversation is None:
                await run_in_threadpool(session.close)
            await run_in_threadpool(self.expire)

    def _acquire(self, conversation: str | None) -> ToolSession:
        with self.guard:
            if self.closed:
                raise RuntimeError("the server is stopping")
            session = self.sessions.get(conversation) if conversation else None
            if session is not None:
                session.users += 1
                return session
        session = self._open(conversation or f"request-{uuid.uuid4().hex}")
        with self.guard:
            if conversation and conversation in self.sessions:  # another request opened it meanwhile
                session.close()
                session = self.sessions[conversation]
            elif conversation:
                self.sessions[conversation] = session
                self._start_reaper()
            session.users += 1
        self.expire()
        return session

    def _start_reaper(self) -> None:
        """A thread that ends idle conversations though no request comes; called holding the guard."""
        if self.reaper is None:
            self.reaper = threading.Thread(target=self._reap, name="glm4-local-tool-reaper", daemon=True)
            self.reaper.start()

    def _reap(self) -> None:
        # a conversation ends at most a tenth of its idle time late
        while not self.stopping.wait(self.idle_seconds / 10):
            self.expire()

    def _open(self, conversation: str) -> ToolSession:
        data_dir = self.root / conversation
        data_dir.mkdir(parents=True, exist_ok=True)
        return ToolSession(conversation, Toolbox(built_in=self.open_tools(data_dir), mcp=self.mcp), data_dir)

    def expire(self, now: float | None = None) -> list[str]:
        """End conversations idle too long, and the least recently used beyond the limit; their ids."""
        now = time.monotonic() if now is None else now
        with self.guard:
            idle = sorted((s for s in self.sessions.values() if s.users == 0), key=lambda s: s.last_used)
            ended = [s for s in idle if now - s.last_used >= self.idle_seconds]
            over = len(self.sessions) - len(ended) - self.max_conversations
            ended += [s for s in idle if s not in ended][:max(over, 0)]
            for session in ended:
                del self.sessions[session.conversation]
        for session in ended:
            session.close()
        return [s.conversation for s in ended]

    def data_dir(self, conversation: str) -> Path:
        """Where a conversation's /mnt/data is; UnknownConversation once it has ended."""
        with self.guard:
            session = self.sessions.get(conversation)
        if session is None:
            raise UnknownConversation(conversation)
        return session.data_dir

    def close(self) -> None:
        with self.guard:
            self.closed = True
            sessions, self.sessions = list(self.sessions.values()), {}
            reaper = self.reaper
        self.stopping.set()
        if reaper is not None:
            reaper.join()
        for session in sessions:
            session.close()
        if self.mcp is not None:
            with contextlib.suppress(Exception):
                self.mcp.close()
        shutil.rmtree(self.root, ignore_errors=True)


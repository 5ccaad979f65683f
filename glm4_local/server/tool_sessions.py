"""The server's own tools (`serve --python/--browser/--mcp`): one toolbox per conversation id.

A conversation's Python kernel, its /mnt/data folder and its browser's open pages belong to the id the
client sends (`conversation_id`); another id never sees them. A conversation ends only when it has been
idle for `idle_seconds` (kernel stopped, folder removed), by a reaper thread even when no other request
comes. At most `max_conversations` toolboxes exist at once, requests without an id (a toolbox of their
own, ended with the request) included: past that, a new one is refused (503) until one ends, so no
client can end another's conversation by opening many. A conversation that ended is remembered for a
while: its next request is told so (`notice`), and so is a request for one of its files. MCP servers are
shared by every conversation: they are the user's own programs, started once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from glm4_local.core.families.replies import BuiltInTools
from glm4_local.server.options import DEFAULT_IDLE_SECONDS, DEFAULT_MAX_CONVERSATIONS
from glm4_local.tools.mcp_servers import McpServers
from glm4_local.tools.observation import Tool
from glm4_local.tools.toolbox import Toolbox

REMEMBERED_ENDINGS = 4096  # ended conversations whose next request is told why its state is gone
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OpenTools = Callable[[Path], dict[str, Tool]]  # a conversation's data folder -> its built-in tools


class UnknownConversation(Exception):
    """No open conversation has this id: never had one, or it ended (then the message says how)."""

    def __init__(self, message: str, ended: bool = False) -> None:
        super().__init__(message)
        self.ended = ended


class TooManyConversations(Exception):
    """Every toolbox the server may have is in use or not yet idle long enough to end."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the server runs tools for at most its limit of conversations at once; try again in "
                         f"{math.ceil(retry_after)} s, or end one")
        self.retry_after = retry_after


@dataclass
class ToolSession:
    conversation: str
    toolbox: Toolbox
    data_dir: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one request of a conversation at a time
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0
    notice: str | None = None  # for the first request of a conversation that had ended: what was lost

    def take_notice(self) -> str | None:
        """The notice, for the one request that tells it."""
        notice, self.notice = self.notice, None
        return notice

    def close(self) -> None:
        for tool in self.toolbox.built_in.values():  # the shared MCP servers stay
            with contextlib.suppress(Exception):
                tool.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ToolSessions:
    def __init__(self, open_tools: OpenTools, enabled: tuple[str, ...], mcp: McpServers | None = None,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS, max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
                 root: Path | None = None, names: BuiltInTools | None = None) -> None:
        self.open_tools = open_tools
        self.enabled = enabled  # the built-in tools the server runs, by the names the model calls them
        self.names = names or BuiltInTools()  # what the model's family calls its built-in tools
        self.mcp = mcp
        self.idle_seconds = idle_seconds
        self.max_conversations = max_conversations
        self.root = root or Path(tempfile.mkdtemp(prefix="glm4-local-serve-"))
        self.sessions: dict[str, ToolSession] = {}  # open ones, requests without an id included
        self.ended: OrderedDict[str, str] = OrderedDict()  # conversation id -> how it ended
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
        """The conversation's toolbox, held for one request (others of the same id wait);
        TooManyConversations when no toolbox can be had now."""
        session = await run_in_threadpool(self._acquire, conversation)
        try:
            async with session.lock:
                yield session
        finally:
            with self.guard:
                session.users -= 1
                session.last_used = time.monotonic()
                one_off = conversation is None
                if one_off:
                    self.sessions.pop(session.conversation, None)
            if one_off:
                await run_in_threadpool(session.close)
            await run_in_threadpool(self.expire)

    def _acquire(self, conversation: str | None) -> ToolSession:
        self.expire()  # idle ones first: they make room
        key = conversation or f"request-{uuid.uuid4().hex}"
        with self.guard:
            if self.closed:
                raise RuntimeError("the server is stopping")
            session = self.sessions.get(key)
            if session is not None:
                session.users += 1
                return session
            if len(self.sessions) >= self.max_conversations:
                raise TooManyConversations(self._next_free())
            session = self._open(key)
            if (reason := self.ended.pop(key, None)) is not None:
                session.notice = (f"conversation {key} {reason}: its kernel's variables, its /mnt/data files and its "
                                  "open pages are gone, and it starts anew")
            session.users += 1
            self.sessions[key] = session
            if conversation:
                self._start_reaper()
        return session

    def _next_free(self) -> float:
        """Seconds until the first idle conversation ends (a guess when none is idle); under the guard."""
        idle = [s.last_used for s in self.sessions.values() if s.users == 0]
        return max(min(idle) + self.idle_seconds - time.monotonic(), 1.0) if idle else 5.0

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
        return ToolSession(conversation, Toolbox(self.names, self.open_tools(data_dir), self.mcp), data_dir)

    def expire(self, now: float | None = None) -> list[str]:
        """End the conversations idle for `idle_seconds`, and only those; their ids."""
        now = time.monotonic() if now is None else now
        with self.guard:
            ended = [s for s in self.sessions.values() if s.users == 0 and now - s.last_used >= self.idle_seconds]
            for session in ended:
                del self.sessions[session.conversation]
                self.ended[session.conversation] = f"ended after {self.idle_seconds:g} s without a request"
                while len(self.ended) > REMEMBERED_ENDINGS:
                    self.ended.popitem(last=False)
        for session in ended:
            session.close()
        return [s.conversation for s in ended]

    def data_dir(self, conversation: str) -> Path:
        """Where a conversation's /mnt/data is; UnknownConversation once it has ended (saying how)."""
        with self.guard:
            session = self.sessions.get(conversation)
            ending = self.ended.get(conversation)
        if session is None:
            raise UnknownConversation(f"conversation {conversation} {ending}; its files went with it" if ending
                                      else "no such conversation", ending is not None)
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

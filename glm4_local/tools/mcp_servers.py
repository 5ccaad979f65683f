"""MCP servers as GLM-4 functions: `--mcp FILE` in the format Cursor and Claude Desktop use,
`{"mcpServers": {"name": {"command", "args", "env"} | {"url", "headers"}}}`, through the official `mcp`
SDK. Their tools are offered to the model as functions (a name two servers share gets the server's
name in front), calls are forwarded, text results come back as observations. The servers start with
the chat and stop with it; one that fails to start or dies is reported in one line and the chat goes
on without it. The SDK is asynchronous: its sessions live on one event loop in a thread of their own.
A command's server is spoken to through our own bounded transport (mcp_stdio.py); a result is cut for
the model as the python tool's are; a server that does not start in time is stopped, not left running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.jsonfile import read_json
from glm4_local.core.words import counted
from glm4_local.tools.extras import needs
from glm4_local.tools.mcp_stdio import bounded_stdio
from glm4_local.tools.observation import Observation, cut, system_error

MCP_KEY = "mcp_server"  # marks a tool entry as an MCP server's (a saved session's are offered anew)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 120.0
NAME_CHARS = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Glm4LocalError(f"{where}: must be a list of strings")
    return tuple(value)


def _pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Glm4LocalError(f"{where}: must be an object of strings")
    return tuple(value.items())


def load_config(path: Path) -> list[ServerSpec]:
    data = read_json(path)
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise Glm4LocalError(f"{path}: expected {{\"mcpServers\": {{name: {{\"command\": ...}} | {{\"url\": ...}}}}}}")
    specs = []
    for name, spec in servers.items():
        where = f"{path}: mcpServers.{name}"
        if not isinstance(spec, dict) or not (isinstance(spec.get("command"), str) or isinstance(spec.get("url"), str)):
            raise Glm4LocalError(f"{where}: needs a \"command\" or a \"url\"")
        specs.append(ServerSpec(name, spec.get("command"), _strings(spec.get("args", []), f"{where}.args"),
                                _pairs(spec.get("env", {}), f"{where}.env"), spec.get("url"),
                                _pairs(spec.get("headers", {}), f"{where}.headers")))
    return specs


def _function_name(wanted: str, taken: set[str]) -> str:
    name = NAME_CHARS.sub("_", wanted)[:64]
    if not name or name[0].isdigit():
        name = ("t_" + name)[:64]
    base, n = name, 2
    while name in taken:
        name = f"{base[:60]}_{n}"
        n += 1
    return name


def result_text(result: Any) -> str:
    """An MCP tool result as the text the model reads (text parts; other parts named)."""
    parts = []
    for part in getattr(result, "content", None) or []:
        kind = getattr(part, "type", "")
        if kind == "text":
            parts.append(part.text)
        elif kind == "resource" and hasattr(getattr(part, "resource", None), "text"):
            parts.append(part.resource.text)
        else:
            parts.append(f"[{kind or 'content'}]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


class _Server:
    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.session: Any = None
        self.tools: list[Any] = []
        self.stop: asyncio.Event | None = None
        self.gone: str | None = None
        self.reported = False  # the user was told it is gone
        self.stderr: collections.deque[str] = collections.deque()  # its last lines, for its failure line
        self.task: asyncio.Task[None] | None = None

    def log_tail(self) -> str:
        lines = [line for line in self.stderr if line.strip()]
        return f": {lines[-1][:200]}" if lines else ""

    async def serve(self, ready: asyncio.Future[None]) -> None:
        from mcp import ClientSession

        self.stop = asyncio.Event()
        try:
            async with self._transport() as streams, ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                self.tools = list((await session.list_tools()).tools)
                self.session = session
                ready.set_result(None)
                await self.stop.wait()
        except BaseException as e:  # the SDK raises task-group errors of every kind when a server dies
            self.gone = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if not ready.done():
                ready.set_exception(Glm4LocalError(f"MCP server {self.spec.name!r} did not start{self.log_tail()}"))
        finally:
            self.session = None

    def _transport(self) -> Any:
        if self.spec.url:
            from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

            client = create_mcp_http_client(headers=dict(self.spec.headers)) if self.spec.headers else None
            return streamable_http_client(self.spec.url, http_client=client)
        from mcp.client.stdio import get_default_environment

        return self._stdio(get_default_environment() | dict(self.spec.env))

    @contextlib.asynccontextmanager
    async def _stdio(self, env: dict[str, str]) -> Any:
        async with bounded_stdio(self.spec.command or "", list(self.spec.args), env) as (read, write, stderr):
            self.stderr = stderr
            yield read, write


class McpServers:
    """Every server of one config, started together; `functions` is what the model is offered."""

    def __init__(self, specs: Sequence[ServerSpec], notify: Callable[[str], None], reserved: set[str]) -> None:
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise Glm4LocalError(needs("MCP servers", "mcp", "mcp")) from None
        self.notify = notify
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mcp", daemon=True)
        self.thread.start()
        self.servers = [_Server(spec) for spec in specs]
        self.tasks: list[asyncio.Task[None]] = []
        self.routes: dict[str, tuple[_Server, str]] = {}
        self.functions: list[dict[str, Any]] = []
        for server in self.servers:
            self._start(server, reserved)

    def _start(self, server: _Server, reserved: set[str]) -> None:
        async def begin() -> None:
            ready = self.loop.create_future()
            server.task = asyncio.ensure_future(server.serve(ready))
            self.tasks.append(server.task)
            try:
                await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT)
            except (asyncio.TimeoutError, TimeoutError):
                server.task.cancel()  # stuck in its handshake: its transport stops the process
                await asyncio.wait({server.task}, timeout=10)
                raise

        try:
            asyncio.run_coroutine_threadsafe(begin(), self.loop).result(START_TIMEOUT + 15)
        except (Glm4LocalError, TimeoutError, asyncio.TimeoutError) as e:
            self.notify(str(e) if isinstance(e, Glm4LocalError) and str(e)
                        else f"MCP server {server.spec.name!r} did not start within {START_TIMEOUT:g} s (stopped)")
            self._stop(server)
            return
        for tool in server.tools:
            taken = reserved | self.routes.keys()
            wanted = tool.name if tool.name not in taken else f"{server.spec.name}.{tool.name}"
            name = _function_name(wanted, taken)
            self.routes[name] = (server, tool.name)
            function = {"name": name, "description": tool.description or "",
                        "parameters": tool.input_schema or {"type": "object", "properties": {}}}
            self.functions.append({"type": "function", "function": function, MCP_KEY: server.spec.name})

    def describe(self) -> list[str]:
        lines = []
        for server in self.servers:
            names = [n for n, (s, _) in self.routes.items() if s is server]
            state = f"gone ({server.gone})" if server.gone else f"{counted(len(names), 'tool')}: {', '.join(names)}"
            lines.append(f"MCP {server.spec.name}: {state}")
        return lines

    def answers(self, name: str) -> bool:
        return name in self.routes

    def run(self, name: str, payload: str) -> Sequence[Observation]:
        server, tool = self.routes[name]
        if server.session is None:
            return [system_error(f"MCP server {server.spec.name!r} is gone ({server.gone or 'stopped'}); "
                                 f"{name} cannot be called")]
        try:
            arguments = json.loads(payload) if payload.strip() else {}
        except json.JSONDecodeError as e:
            return [system_error(f"the arguments are not valid JSON ({e.msg})")]
        future = asyncio.run_coroutine_threadsafe(server.session.call_tool(tool, arguments), self.loop)
        try:
            result = future.result(CALL_TIMEOUT)
        except TimeoutError:
            future.cancel()
            return [system_error(f"{name} did not answer within {CALL_TIMEOUT:g} s")]
        except Exception as e:  # a dead server, a protocol error: the model is told, the chat goes on
            self._report_if_gone(server)
            return [system_error(f"calling {name} failed: {type(e).__name__}: {e}")]
        text = result_text(result)
        return [Observation("", cut(text), ("error: " if getattr(result, "is_error", False) else "") + text[:300])]

    def _report_if_gone(self, server: _Server) -> None:
        """After a failed call: if the server no longer answers a ping it is gone: stopped, and one line
        for the user."""
        session = server.session
        if session is not None:
            ping = asyncio.run_coroutine_threadsafe(asyncio.wait_for(session.send_ping(), 5.0), self.loop)
            try:
                ping.result(6.0)
                return  # alive: the call itself failed
            except Exception as e:  # any failure to answer a ping means the same: the server is gone
                server.gone = server.gone or (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                server.session = None
                self._stop(server)
        if not server.reported:
            server.reported = True
            self.notify(f"MCP server {server.spec.name!r} is gone ({server.gone or 'stopped'}); "
                        "the chat goes on without it")

    def _stop(self, server: _Server) -> None:
        if server.stop is not None:
            self.loop.call_soon_threadsafe(server.stop.set)

    def interrupt(self) -> None:
        """A call in progress is abandoned by the caller; the server keeps running."""

    def close(self) -> None:
        if self.loop.is_closed():
            return
        for server in self.servers:
            self._stop(server)

        async def finish() -> None:
            if not self.tasks:
                return
            _, stuck = await asyncio.wait(self.tasks, timeout=5)
            for task in stuck:  # not leaving when asked (a call under way): its transport stops the process
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=10)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(finish(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():  # closed here, not by the garbage collector (which may print a traceback)
            self.loop.close()

"""The chat's tools from its options: which built-in tools are on, where their state lives (the
conversation's data folder beside its saved session), and what the model is offered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.paths import data_home
from glm4_local.server.tool_sessions import ToolSessions
from glm4_local.tools import browser as browser_tool
from glm4_local.tools import python_tool
from glm4_local.tools.browser import Browser
from glm4_local.tools.extras import require
from glm4_local.tools.mcp_servers import MCP_KEY, McpServers, load_config
from glm4_local.tools.observation import Confirm, Tool
from glm4_local.tools.options import ToolOptions
from glm4_local.tools.python_tool import PythonTool
from glm4_local.tools.sandbox import Sandbox, find_sandbox, sandbox_help
from glm4_local.tools.search_backends import open_backend
from glm4_local.tools.toolbox import Toolbox


def data_folder(session_file: Path) -> Path:
    """The conversation's /mnt/data: beside its saved session, so --resume finds its files again."""
    return session_file.with_suffix(".data")


def _sandbox(options: ToolOptions, confirm: Confirm | None) -> Sandbox | None:
    """The sandbox the model's code runs in (None: unconfined, each cell confirmed), or one clear error."""
    require("--python", "code", "jupyter_client", "ipykernel")
    if not options.python_timeout > 0:
        raise Glm4LocalError(f"--python-timeout must be positive, not {options.python_timeout}")
    sandbox = None if options.unconfined else find_sandbox()
    if sandbox is None and not options.unconfined:
        raise Glm4LocalError(f"--python runs the model's code in a sandbox, and this machine has none: "
                             f"{sandbox_help()} (or --python-unconfined, which asks before each run)")
    if sandbox is None and confirm is None:
        raise Glm4LocalError("--python-unconfined asks before each run, which needs the interactive chat")
    return sandbox


def _python(options: ToolOptions, data_dir: Path, confirm: Confirm | None) -> PythonTool:
    return PythonTool(data_dir, _sandbox(options, confirm), options.python_timeout, confirm)


def open_toolbox(options: ToolOptions, session_file: Path, confirm: Confirm | None,
                 notify: Callable[[str], None], reserved: set[str]) -> Toolbox:
    """Every tool the options enable; `reserved`: function names the user's own tools already use."""
    toolbox = Toolbox(program=options.program)
    try:
        if options.python:
            toolbox.built_in[python_tool.NAME] = _python(options, data_folder(session_file), confirm)
        if options.browser is not None:
            require("--browser", "browser", "trafilatura")  # every backend's pages are read with it
            backend = open_backend(options.browser, data_home() / "cache" / "search")
            toolbox.built_in[browser_tool.NAME] = Browser(backend, options.allow_private)
        if options.mcp is not None:
            require("--mcp", "mcp", "mcp")
            toolbox.mcp = McpServers(load_config(options.mcp), notify, reserved)
    except BaseException:
        toolbox.close()
        raise
    return toolbox


def server_tools(options: ToolOptions, idle_seconds: float, max_conversations: int,
                 notify: Callable[[str], None]) -> ToolSessions | None:
    """The tools `serve` runs for its clients, one toolbox per conversation (None when none is on)."""
    if not options.any:
        return None
    sandbox = _sandbox(options, None) if options.python else None
    backend = None
    if options.browser is not None:
        require("--browser", "browser", "trafilatura")
        backend = open_backend(options.browser, data_home() / "cache" / "search")
    if options.mcp is not None:
        require("--mcp", "mcp", "mcp")
    mcp = McpServers(load_config(options.mcp), notify, set()) if options.mcp is not None else None

    def open_tools(data_dir: Path) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        if options.python:
            tools[python_tool.NAME] = PythonTool(data_dir, sandbox, options.python_timeout)
        if backend is not None:
            tools[browser_tool.NAME] = Browser(backend, options.allow_private)
        return tools

    enabled = tuple(name for name, on in ((python_tool.NAME, options.python), (browser_tool.NAME, backend is not None))
                    if on)
    return ToolSessions(open_tools, enabled, mcp, idle_seconds, max_conversations)


def user_functions(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The user's own functions among a conversation's tools (not built-in tools, not MCP servers', which
    are offered anew from the servers running now)."""
    return [t for t in tools or [] if t.get("type") == "function" and MCP_KEY not in t]


def offered_tools(user_tools: list[dict[str, Any]] | None, toolbox: Toolbox) -> list[dict[str, Any]] | None:
    """What the model is offered: the user's functions (a resumed conversation's too), then the toolbox's;
    built-in tool entries only for the tools on now."""
    offered = toolbox.prompt_tools()
    built_in = [t for t in offered if t.get("type") != "function"]
    functions = [t for t in offered if t.get("type") == "function"]
    names = {t["function"]["name"] for t in functions}
    kept = [t for t in user_functions(user_tools) if t["function"]["name"] not in names]
    return [*built_in, *kept, *functions] or None

"""The chat's tools from its options: which built-in tools are on, where their state lives (the
conversation's data folder beside its saved session), and what the model is offered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.replies import BuiltInTools
from glm4_local.core.paths import data_home
from glm4_local.server.tool_sessions import ToolSessions
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


def _names(options: ToolOptions, names: BuiltInTools) -> tuple[str | None, str | None]:
    """The names the model calls the code interpreter and the browser the options enable; one clear error
    when the model's family has no such tool."""
    for flag, on, name in (("--python", options.python, names.code), ("--browser", options.browser, names.browser)):
        if on and name is None:
            raise Glm4LocalError(f"{flag}: this model was not trained with that tool")
    return (names.code if options.python else None), (names.browser if options.browser is not None else None)


def open_toolbox(options: ToolOptions, names: BuiltInTools, session_file: Path, confirm: Confirm | None,
                 notify: Callable[[str], None], reserved: set[str]) -> Toolbox:
    """Every tool the options enable, by the names the model's family gives them; `reserved`: function
    names the user's own tools already use."""
    code, browser = _names(options, names)
    toolbox = Toolbox(names, program=options.program)
    try:
        if code:
            toolbox.built_in[code] = _python(options, data_folder(session_file), confirm)
        if browser:
            require("--browser", "browser", "trafilatura")  # every backend's pages are read with it
            backend = open_backend(options.browser or "", data_home() / "cache" / "search")
            toolbox.built_in[browser] = Browser(backend, options.allow_private)
        if options.mcp is not None:
            require("--mcp", "mcp", "mcp")
            toolbox.mcp = McpServers(load_config(options.mcp), notify, reserved)
    except BaseException:
        toolbox.close()
        raise
    return toolbox


def server_tools(options: ToolOptions, names: BuiltInTools, idle_seconds: float, max_conversations: int,
                 notify: Callable[[str], None]) -> ToolSessions | None:
    """The tools `serve` runs for its clients, one toolbox per conversation (None when none is on)."""
    if not options.any:
        return None
    code, browser = _names(options, names)
    sandbox = _sandbox(options, None) if code else None
    backend = None
    if options.browser is not None:
        require("--browser", "browser", "trafilatura")
        backend = open_backend(options.browser, data_home() / "cache" / "search")
    if options.mcp is not None:
        require("--mcp", "mcp", "mcp")
    mcp = McpServers(load_config(options.mcp), notify, set()) if options.mcp is not None else None

    def open_tools(data_dir: Path) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        if code:
            tools[code] = PythonTool(data_dir, sandbox, options.python_timeout)
        if browser and backend is not None:
            tools[browser] = Browser(backend, options.allow_private)
        return tools

    enabled = tuple(name for name in (code, browser) if name)
    return ToolSessions(open_tools, enabled, mcp, idle_seconds, max_conversations, names=names)


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

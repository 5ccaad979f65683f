"""The tools of one conversation, by the name the model calls: GLM-4's built-in tools (`python`,
`simple_browser`: a table from tool type to the tool that runs it), MCP servers' functions, and the
user's own program for the other functions.

What to offer the model (`prompt_tools`), who answers a call (`answers`), running it (`run`, always
a list of observations, failures included), and ending every tool's state with the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glm4_local.core.families.glm4_replies import BROWSER, COGVIEW, PYTHON
from glm4_local.core.families.replies import ToolCall
from glm4_local.tools.browser import Browser
from glm4_local.tools.mcp_servers import McpServers
from glm4_local.tools.observation import Observation, Source, Tool, system_error
from glm4_local.tools.program import ToolRunner
from glm4_local.tools.python_tool import PythonTool

# THUDM's image model is a cloud service: never offered here (it would not run, and nothing leaves the machine)
NOT_OFFERED = (COGVIEW,)


@dataclass
class Toolbox:
    built_in: dict[str, Tool] = field(default_factory=dict)  # GLM-4 tool type -> the tool that runs it
    mcp: McpServers | None = None
    program: ToolRunner | None = None

    @property
    def python(self) -> PythonTool | None:
        tool = self.built_in.get(PYTHON)
        return tool if isinstance(tool, PythonTool) else None

    @property
    def browser(self) -> Browser | None:
        tool = self.built_in.get(BROWSER)
        return tool if isinstance(tool, Browser) else None

    def prompt_tools(self) -> list[dict[str, Any]]:
        """The entries that tell GLM-4's template which built-in tools and MCP functions it has."""
        tools: list[dict[str, Any]] = [{"type": name} for name in self.built_in if name not in NOT_OFFERED]
        return tools + (self.mcp.functions if self.mcp else [])

    def answers(self, name: str) -> bool:
        """Whether a call of `name` is run here (else the user types its result)."""
        if name in self.built_in or (self.mcp and self.mcp.answers(name)):
            return True
        return self.program is not None and name not in (PYTHON, BROWSER, COGVIEW)

    def asks_first(self, name: str) -> bool:
        """Whether running this call asks the user first (code that runs unconfined)."""
        return name == PYTHON and self.python is not None and self.python.sandbox is None

    def run(self, call: ToolCall) -> list[Observation]:
        if call.name in self.built_in:
            return list(self.built_in[call.name].run(call.name, call.arguments))
        if self.mcp and self.mcp.answers(call.name):
            return list(self.mcp.run(call.name, call.arguments))
        if self.program:
            text = self.program.run(call)
            return [Observation("", text, text.strip()[:500])]
        return [system_error(f"no tool answers {call.name!r} in this conversation")]

    def source(self, ref: str) -> Source | None:
        """What a citation 【ref†...】 points to (the browser's quotes and search results)."""
        return self.browser.source(ref) if self.browser else None

    def _tools(self) -> list[Tool]:
        return [*self.built_in.values(), *([self.mcp] if self.mcp else [])]

    def interrupt(self) -> None:
        for tool in self._tools():
            tool.interrupt()

    def close(self) -> None:
        for tool in self._tools():
            tool.close()

"""The tools of one conversation, by the name the model calls: the built-in tools (a table from the
name the model's family gives each to the tool that runs it), MCP servers' functions, and the user's own
program for the other functions.

What to offer the model (`prompt_tools`), who answers a call (`answers`), running it (`run`, always
a list of observations, failures included), and ending every tool's state with the conversation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from glm4_local.core.families.replies import BuiltInTools, ToolCall
from glm4_local.tools.browser import Browser
from glm4_local.tools.mcp_servers import McpServers
from glm4_local.tools.observation import Observation, Source, Tool, system_error
from glm4_local.tools.program import ToolRunner
from glm4_local.tools.python_tool import PythonTool


@dataclass
class Toolbox:
    names: BuiltInTools = field(default_factory=BuiltInTools)  # what the model's family calls its built-in tools
    built_in: dict[str, Tool] = field(default_factory=dict)  # built-in tool's name -> the tool that runs it
    mcp: McpServers | None = None
    program: ToolRunner | None = None

    @property
    def python(self) -> PythonTool | None:
        tool = self.built_in.get(self.names.code or "")
        return tool if isinstance(tool, PythonTool) else None

    @property
    def browser(self) -> Browser | None:
        tool = self.built_in.get(self.names.browser or "")
        return tool if isinstance(tool, Browser) else None

    def prompt_tools(self) -> list[dict[str, Any]]:
        """The entries that tell the template which built-in tools and MCP functions it has."""
        tools: list[dict[str, Any]] = [{"type": name} for name in self.built_in if name not in self.names.not_offered]
        return tools + (self.mcp.functions if self.mcp else [])

    def answers(self, name: str) -> bool:
        """Whether a call of `name` is run here (else the user types its result)."""
        if name in self.built_in or (self.mcp and self.mcp.answers(name)):
            return True
        return self.program is not None and name not in self.names.names

    def asks_first(self, name: str) -> bool:
        """Whether running this call asks the user first (code that runs unconfined)."""
        return name == self.names.code and self.python is not None and self.python.sandbox is None

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
        """What a citation's reference points to (the browser's quotes and search results)."""
        return self.browser.source(ref) if self.browser else None

    def cited(self, text: str) -> dict[str, Source]:
        """The sources an answer cites, by reference, in the order it first cites them."""
        if self.browser is None or self.names.citation is None:
            return {}
        refs = dict.fromkeys(m.group(1) for m in re.finditer(self.names.citation, text))
        return {ref: source for ref in refs if (source := self.browser.source(ref)) is not None}

    def _tools(self) -> list[Tool]:
        return [*self.built_in.values(), *([self.mcp] if self.mcp else [])]

    def interrupt(self) -> None:
        for tool in self._tools():
            tool.interrupt()

    def close(self) -> None:
        for tool in self._tools():
            tool.close()

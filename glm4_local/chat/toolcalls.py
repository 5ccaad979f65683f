"""Function calling: reading tools.json, telling a GLM-4 tool call from a plain reply, running a tool.

After <|assistant|> GLM-4 writes `{metadata}\\n{content}`. A plain answer has empty metadata; a tool
call has the function name as metadata and its JSON arguments as content.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.jsonfile import read_json

CALL_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the model's JSON text, verbatim

    def as_message(self) -> dict[str, Any]:
        """The OpenAI-style assistant message that records this call in the conversation."""
        call = {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}


@dataclass(frozen=True)
class Reply:
    """What the model answered: text (possibly a malformed call, shown as text) or a valid call."""

    text: str
    tool_call: ToolCall | None = None
    problem: str | None = None  # why a call-looking reply was not accepted


def load_tools(path: Path) -> list[dict[str, Any]]:
    """An OpenAI-style list of functions; each entry needs type 'function' and a function name."""
    tools = read_json(path)
    if isinstance(tools, dict) and isinstance(tools.get("tools"), list):
        tools = tools["tools"]
    if not isinstance(tools, list):
        raise Glm4LocalError(f"{path}: expected a JSON list of tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in ("function", "python", "simple_browser", "cogview"):
            raise Glm4LocalError(f"{path}: tool {i} needs \"type\": \"function\"")
        if tool["type"] == "function":
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise Glm4LocalError(f"{path}: tool {i} needs a \"function\" object with a \"name\"")
    return tools


def tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    return {t["function"]["name"] if t.get("type") == "function" else str(t.get("type")) for t in tools}


def may_be_call(first_line: str, tools: Sequence[Mapping[str, Any]] | None) -> bool:
    """Whether a reply's first line could name a function (else it is just the first line of text).

    Without tools GLM-4 has nothing to call, so its replies are text whatever their first line.
    """
    return bool(tools) and bool(CALL_NAME.fullmatch(first_line.strip()))


def parse_reply(generated: str, tools: Sequence[Mapping[str, Any]] | None) -> Reply:
    """Split the generated `{metadata}\\n{content}` into a plain reply or a checked tool call."""
    metadata, newline, content = generated.partition("\n")
    if not newline:
        return Reply(generated)
    if not metadata.strip():
        return Reply(content)
    if not tools or not may_be_call(metadata, tools):
        return Reply(generated)
    name = metadata.strip()
    if name not in tool_names(tools):
        return Reply(generated, problem=f"the model called unknown tool {name!r}")
    try:
        json.loads(content)
    except json.JSONDecodeError as e:
        if name in {str(t.get("type")) for t in tools if t.get("type") != "function"}:
            return Reply(generated, ToolCall(name, content))  # built-in tools (python) take free text
        return Reply(generated, problem=f"arguments for {name!r} are not valid JSON ({e.msg})")
    return Reply(generated, ToolCall(name, content))


def run_tool(executable: Path, call: ToolCall, timeout: float = 300.0) -> str:
    """Run the user's own tool executable with the call as JSON on stdin; its stdout is the result."""
    payload = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    try:
        done = subprocess.run([str(executable)], input=payload, capture_output=True, text=True, timeout=timeout)
    except OSError as e:
        raise Glm4LocalError(f"{executable}: cannot run tool executable ({e.strerror})") from e
    except subprocess.TimeoutExpired:
        return json.dumps({"error": f"tool timed out after {timeout:.0f} s"})
    if done.returncode != 0:
        return json.dumps({"error": f"tool exited with {done.returncode}", "stderr": done.stderr[-2000:]},
                          ensure_ascii=False)
    return done.stdout

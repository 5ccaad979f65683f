"""Conversations and tools as OpenAI shapes them, checked before anything renders them.

Every field gets the type OpenAI's API gives it (content: text, null or a list of text parts;
tool-call arguments: a JSON string; a tool: an object with a named function, ...). Anything else is
one clear error naming the place, so no value of an unexpected type ever reaches a template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.registry import FAMILIES
from glm4_local.core.jsonfile import read_json

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool", "observation")
# tool types some family's template lists (function and built-in tools)
TOOL_TYPES = tuple(dict.fromkeys(t for f in FAMILIES for t in f.replies.tool_types))
MAX_DEPTH = 64


class SchemaError(Glm4LocalError):
    """A conversation or tool list that does not have OpenAI's shape; `param` is the path of the field
    (e.g. messages[2].role), for the server's error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _fail(where: str, problem: str) -> SchemaError:
    return SchemaError(f"{where}: {problem}", where.rsplit(": ", 1)[-1])


def check_value(value: Any, where: str, depth: int = 0) -> None:
    """Any JSON value: not nested absurdly deep, every string (keys too) valid Unicode."""
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(where, "text with an unpaired surrogate (not valid Unicode)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_value(key, where, depth + 1)
            check_value(item, f"{where}.{key}" if depth < 4 else where, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]" if depth < 4 else where, depth + 1)


def _text(value: Any, where: str) -> str | None:
    """content: text, null, or a list of {"type": "text", "text": ...} parts (joined)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _fail(f"{where}[{i}]", "only text parts ({\"type\": \"text\", \"text\": ...}) are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _fail(where, f"must be text, null or a list of text parts, not {type(value).__name__}")


def _optional(message: Message, key: str, kind: type, where: str) -> None:
    if key in message and message[key] is not None and not isinstance(message[key], kind):
        raise _fail(f"{where}.{key}", f"must be {kind.__name__}, not {type(message[key]).__name__}")


def _tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise _fail(where, "must be a list of tool calls")
    for i, call in enumerate(calls):
        here = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise _fail(here, "needs a \"function\" object")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _fail(f"{here}.function.name", "must be a non-empty string")
        if not isinstance(function.get("arguments", ""), str):
            raise _fail(f"{here}.function.arguments",
                        f"must be a JSON string, not {type(function['arguments']).__name__}")
        _optional(call, "id", str, here)


def check_message(message: Any, where: str) -> Message:
    """One message, with its content normalized to text or null."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise _fail(f"{where}.role" if isinstance(message, dict) else where, f"needs a role ({', '.join(ROLES)})")
    check_value(message, where)
    checked = dict(message)
    if "content" in message:
        checked["content"] = _text(message["content"], f"{where}.content")
    for key, kind in (("metadata", str), ("tool_call_id", str), ("name", str), ("interrupted", bool)):
        _optional(message, key, kind, where)
    if "tool_calls" in message and message["tool_calls"] is not None:
        if message["role"] != "assistant":
            raise _fail(f"{where}.tool_calls", "only an assistant message makes tool calls")
        _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    if "tools" in message:
        checked["tools"] = check_tools(message["tools"], f"{where}.tools")
    if message.get("documents") is not None:
        _documents(message, f"{where}.documents")
    return checked


def _documents(message: Message, where: str) -> None:
    """A user message's files, as data the model's family writes into the prompt: [{"name", "text"}]."""
    if message["role"] != "user":
        raise _fail(where, "only a user message carries documents")
    documents = message["documents"]
    if not isinstance(documents, list):
        raise _fail(where, "must be a list of {\"name\": ..., \"text\": ...}")
    for i, document in enumerate(documents):
        if not (isinstance(document, dict) and all(isinstance(document.get(k), str) for k in ("name", "text"))):
            raise _fail(f"{where}[{i}]", "needs a \"name\" and a \"text\" (strings)")


def check_messages(messages: Any, where: str) -> list[Message]:
    if not isinstance(messages, list):
        raise _fail(where, "expected a list of messages")
    return [check_message(m, f"{where}[{i}]") for i, m in enumerate(messages)]


def check_tools(tools: Any, where: str) -> list[dict[str, Any]]:
    """An OpenAI-style list of tools: each {"type": "function", "function": {"name": ..., ...}}."""
    if not isinstance(tools, list):
        raise _fail(where, "expected a JSON list of tools")
    check_value(tools, where)
    for i, tool in enumerate(tools):
        here = f"{where}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") not in TOOL_TYPES:
            raise _fail(f"{here}.type", "needs \"type\": \"function\"")
        if tool["type"] != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise _fail(f"{here}.function", "needs a \"function\" object with a \"name\"")
        if not all(f.replies.valid_function_name(function["name"]) for f in FAMILIES):
            raise _fail(f"{here}.function.name", f"{function['name']!r} must be letters, digits, _ . - "
                        "(up to 64, not starting with a digit)")
        for key, kind in (("description", str), ("parameters", dict)):
            _optional(function, key, kind, f"{here}.function")
    return tools


def load_tools(path: Path) -> list[dict[str, Any]]:
    """A tools.json file: a list of tools, or an object with a "tools" list."""
    tools = read_json(path)
    if isinstance(tools, dict) and isinstance(tools.get("tools"), list):
        tools = tools["tools"]
    return check_tools(tools, str(path))

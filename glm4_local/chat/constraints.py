"""Grammars that hold a reply to a shape: a JSON answer, or a call of one of the given functions.

The JSON rules come from chat/json_grammar.py; the family's reply format frames them (for
GLM-4-9B: an empty metadata line before an answer, the function's name line before a call).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from glm4_local.chat.json_grammar import GrammarBuilder, SchemaUnsupported
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.replies import ReplyFormat

ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_SCHEMA_CHARS = 64 * 1024  # a larger schema makes a grammar too slow to apply at every token


class ConstraintError(Glm4LocalError):
    """A schema that cannot become a grammar; `param` is the request field that holds it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _rules(schemas: dict[str, tuple[Any, str]]) -> str:
    """Rules named by the keys, for (schema, the request field it came from)."""
    builder = GrammarBuilder()
    for name, (schema, param) in schemas.items():
        if not isinstance(schema, dict):
            raise ConstraintError(f"{param}: a JSON schema must be an object", param)
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise ConstraintError(f"{param}: the JSON schema is larger than {MAX_SCHEMA_CHARS // 1024} KiB", param)
        try:
            builder.add(name, schema)
        except SchemaUnsupported as e:
            raise ConstraintError(f"{param}: cannot hold the output to this JSON schema: {e}", param) from None
    try:
        return builder.grammar()
    except SchemaUnsupported as e:
        param = next(iter(schemas.values()))[1] if len(schemas) == 1 else "tools"
        raise ConstraintError(f"{param}: cannot hold the output to these JSON schemas: {e}", param) from None


def answer_grammar(replies: ReplyFormat, schema: Mapping[str, Any] | None) -> str:
    """An answer whose content is JSON: any object, or one matching `schema`."""
    where = "response_format.json_schema.schema" if schema is not None else "response_format"
    rules = _rules({"answer": (ANY_OBJECT if schema is None else schema, where)})
    return f"{replies.answer_grammar('answer')}\n{rules}\n"


def _parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    parameters = tool["function"].get("parameters")
    return dict(parameters) if parameters else ANY_OBJECT


def function_tools(tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [t for t in tools if t.get("type") == "function"]


def call_grammar(replies: ReplyFormat, tools: Sequence[Mapping[str, Any]], named: str | None = None) -> str:
    """A call of one of `tools`, its arguments matching the function's schema.

    `named`: the call's name is already in the prompt (prefilled), so only its arguments follow.
    """
    functions = [(i, t) for i, t in enumerate(tools) if t.get("type") == "function"
                 and (named is None or t["function"]["name"] == named)]
    if not functions:
        raise ConstraintError("tool_choice: no function tool to call", "tool_choice")
    rules = _rules({f"call{i}": (_parameters(t), f"tools[{i}].function.parameters") for i, t in functions})
    calls = {t["function"]["name"]: f"call{i}" for i, t in functions}
    return f"{replies.call_grammar(calls, named is not None)}\n{rules}\n"

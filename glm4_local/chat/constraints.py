"""Grammars that hold a reply to a shape: a JSON answer, or a call of one of the given functions.

The JSON rules come from chat/json_grammar.py; the family's reply format frames them (for
GLM-4-9B: an empty metadata line before an answer, the function's name line before a call).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from glm4_local.chat.json_grammar import SchemaUnsupported, schema_rules
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.replies import ReplyFormat

ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_SCHEMA_CHARS = 64 * 1024  # a larger schema makes a grammar too slow to apply at every token


class ConstraintError(Glm4LocalError):
    """A schema that cannot become a grammar."""


def _rules(schemas: dict[str, Any], what: str) -> str:
    for schema in schemas.values():
        if not isinstance(schema, dict):
            raise ConstraintError(f"{what}: a JSON schema must be an object")
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise ConstraintError(f"{what}: the JSON schema is larger than {MAX_SCHEMA_CHARS // 1024} KiB")
    try:
        return schema_rules(schemas)
    except SchemaUnsupported as e:
        raise ConstraintError(f"{what}: cannot hold the output to this JSON schema: {e}") from None


def answer_grammar(replies: ReplyFormat, schema: Mapping[str, Any] | None) -> str:
    """An answer whose content is JSON: any object, or one matching `schema`."""
    rules = _rules({"answer": dict(schema) if schema is not None else ANY_OBJECT}, "response_format")
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
    functions = function_tools(tools)
    if named is not None:
        functions = [t for t in functions if t["function"]["name"] == named]
    if not functions:
        raise ConstraintError("tool_choice: no function tool to call")
    schemas = {f"call{i}": _parameters(t) for i, t in enumerate(functions)}
    rules = _rules(schemas, "tools")
    calls = {t["function"]["name"]: f"call{i}" for i, t in enumerate(functions)}
    return f"{replies.call_grammar(calls, named is not None)}\n{rules}\n"

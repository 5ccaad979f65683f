"""Grammars that hold a GLM-4 reply to a shape: a JSON answer, or a call of one of the given functions.

A GLM-4 reply is `{metadata}\\n{content}`: an answer has empty metadata, a call has the function's
name there and its JSON arguments as content. The JSON rules come from llama.cpp's own converter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama.door import json_schema_grammar

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
        return json_schema_grammar(schemas)
    except (ValueError, RecursionError) as e:
        raise ConstraintError(f"{what}: cannot follow this JSON schema ({e})") from None


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes as JSON does


def answer_grammar(schema: Mapping[str, Any] | None) -> str:
    """An answer (empty metadata line) whose content is JSON: any object, or one matching `schema`."""
    rules = _rules({"answer": dict(schema) if schema is not None else ANY_OBJECT}, "response_format")
    return f'root ::= "\\n" answer\n{rules}\n'


def _parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    parameters = tool["function"].get("parameters")
    return dict(parameters) if parameters else ANY_OBJECT


def function_tools(tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [t for t in tools if t.get("type") == "function"]


def call_grammar(tools: Sequence[Mapping[str, Any]], named: str | None = None) -> str:
    """A call of one of `tools` (name line, then arguments matching its schema).

    `named`: the call's name is already in the prompt (prefilled), so only its arguments follow.
    """
    functions = function_tools(tools)
    if named is not None:
        functions = [t for t in functions if t["function"]["name"] == named]
    if not functions:
        raise ConstraintError("tool_choice: no function tool to call")
    schemas = {f"call{i}": _parameters(t) for i, t in enumerate(functions)}
    rules = _rules(schemas, "tools")
    if named is not None:
        return f"root ::= call0\n{rules}\n"
    choices = " | ".join(f"{_literal(t['function']['name'] + chr(10))} call{i}" for i, t in enumerate(functions))
    return f"root ::= {choices}\n{rules}\n"

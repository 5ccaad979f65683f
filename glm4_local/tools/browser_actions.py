"""The `simple_browser` call's action lines: `search("query", recency_days=7)`, `mclick([0, 2, 5])`,
`open_url("https://...")`, one a line, as GLM-4 writes them. Arguments are read as Python literals
(never evaluated), so a query with commas or quotes inside is read whole."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

CALL = re.compile(r"\w\(")  # with a ")" after it: the demo's test for "this line is an action", in linear time
MAX_RECENCY_DAYS = 36_500  # a century: no filter at all, as far as any index knows


class ActionError(Exception):
    """An action that failed: its text is the demo's error message for the model, `detail` why (for the user)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class Action:
    name: str  # search, mclick, open_url
    query: str = ""
    recency_days: int | None = None
    ids: tuple[Any, ...] = ()
    url: str = ""


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ActionError("Parse Error") from None


def _call(line: str) -> ast.Call:
    opened = CALL.search(line)
    if opened is None or ")" not in line[opened.end():]:
        raise ActionError("Parse Error")
    try:
        tree = ast.parse(line.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ActionError(f"Parse Error: {line}") from None
    if not isinstance(tree.body, ast.Call) or not isinstance(tree.body.func, ast.Name):
        raise ActionError(f"Parse Error: {line}")
    return tree.body


def parse_action(line: str) -> Action:
    call = _call(line)
    name = call.func.id  # type: ignore[attr-defined]
    args = [_literal(a) for a in call.args]
    keywords = {k.arg: _literal(k.value) for k in call.keywords if k.arg}
    if name == "search" and args and isinstance(args[0], str):
        days = keywords.get("recency_days", args[1] if len(args) > 1 else None)
        if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
            days = None
        return Action(name, query=args[0], recency_days=min(days, MAX_RECENCY_DAYS) if days else None)
    if name == "mclick" and len(args) == 1 and isinstance(args[0], (list, tuple)):
        return Action(name, ids=tuple(args[0]))
    if name == "open_url" and args and isinstance(args[0], str):
        return Action(name, url=args[0])
    raise ActionError(f"Parse Error: {line}")

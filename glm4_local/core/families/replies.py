"""What a family's reply format tells the rest of glm4-local: a reply is an answer or a call.

Each family has one reply format (GLM-4-9B's is glm4_replies.py): how its replies stream and are
read (an answer, a call of a function or of a built-in tool), the grammar frame that holds a reply to
a shape, and how OpenAI-style messages (calls, tool results) are written back for its template.
Chat, the server and (later) the built-in tools ask the format; none of them parses replies itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, Any]
Tools = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the model's text, verbatim (JSON for a function; code or an action for a built-in tool)

    def as_message(self) -> Message:
        """The OpenAI-style assistant message that records this call in the conversation."""
        call = {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}


@dataclass(frozen=True)
class Reply:
    """A finished reply: an answer, a call, or something that looked like a call and is kept as text."""

    text: str  # what the user is shown: the answer, or the whole reply verbatim when it looked like a call
    tool_call: ToolCall | None = None
    problem: str | None = None  # why a call-looking reply was not accepted
    metadata: str | None = None  # set when a call-looking reply is kept as the model wrote it
    content: str = ""  # with metadata: the rest of the reply
    partial_call: ToolCall | None = None  # a call of a known tool that was not finished (cut off, bad JSON)

    def as_message(self) -> Message:
        """The assistant message that records this reply in the conversation."""
        if self.tool_call is not None:
            return self.tool_call.as_message()
        if self.metadata is not None:
            return {"role": "assistant", "metadata": self.metadata, "content": self.content}
        return {"role": "assistant", "content": self.text}


class ReplyStream(Protocol):
    """A reply as it streams: what to show of each chunk now."""

    @property
    def held(self) -> bool:
        """The reply may be a call: nothing of it is shown until it is finished."""

    def feed(self, chunk: str) -> str: ...

    def end(self) -> str:
        """What is left to show once the reply is over."""


class ReplyFormat(Protocol):
    tool_types: tuple[str, ...]  # the tool types its template lists (function and built-in tools)

    def valid_function_name(self, name: str) -> bool: ...

    def stream(self, tools: Tools | None, prefix: str = "") -> ReplyStream: ...

    def finish(self, generated: str, tools: Tools | None, call_ended: bool) -> Reply:
        """The reply, decided: a call only if it is well formed and `call_ended` (the model ended it
        as a call, or a grammar forced it); else text."""

    def template_messages(self, messages: Sequence[Mapping[str, Any]], tools: Tools | None) -> list[Message]:
        """OpenAI-style messages (calls and tool results included) as the family's template takes them."""

    def answer_grammar(self, answer_rule: str) -> str:
        """A GBNF root for an answer whose content is `answer_rule`."""

    def call_grammar(self, calls: Mapping[str, str], named: bool) -> str:
        """A GBNF root for a call of one of `calls` (function name -> its arguments' rule). `named`: the
        only function's name is already prefilled (see call_prefix), so only the arguments follow."""

    def call_prefix(self, name: str) -> str:
        """Reply text that, prefilled, makes the reply a call of `name`."""

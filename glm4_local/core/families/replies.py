"""What a family's conversation format tells the rest of glm4-local: a reply is an answer or a call.

Each family has one format (GLM-4-9B's is glm4_replies.py): how its replies stream and are read (an
answer, a call of a function or of a built-in tool), the grammar frame that holds a reply to a shape,
how OpenAI-style messages (calls, tool results, documents) are written for its template, what its
built-in tools are called and how its answers cite. Chat, the server, the built-in tools and the page
ask the format; none of them parses replies or writes the family's forms itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, Any]
Tools = Sequence[Mapping[str, Any]]
Documents = Sequence[Mapping[str, str]]  # files in a user message: {"name": ..., "text": ...} each


@dataclass(frozen=True)
class BuiltInTools:
    """The names a family's template gives the built-in tools glm4-local runs (None: it has no such tool)."""

    code: str | None = None  # a code interpreter (a Jupyter kernel)
    browser: str | None = None  # a web browser (search, open, quote)
    # how an answer cites what the browser found: a pattern (group 1 the reference, 2 its text) that reads
    # the same in Python and JavaScript (the page renders citations with it), starting and ending with a
    # literal mark (a reply streamed to the terminal is held back from an opening mark to its closing one)
    citation: str | None = None
    not_offered: tuple[str, ...] = ()  # tools its template knows that are never offered here

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.code, self.browser, *self.not_offered) if n)

    def kind(self, name: str) -> str | None:
        """"code" or "browser" for the tool of that name; None for any other."""
        return "code" if name == self.code else "browser" if name == self.browser else None


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
    reasoning: str = ""  # what a reasoning model thought before the reply (never fed back to it)

    def as_message(self) -> Message:
        """The assistant message that records this reply in the conversation (its reasoning as
        `reasoning_content`, as llama-server and vLLM return it)."""
        if self.tool_call is not None:
            message = self.tool_call.as_message()
        elif self.metadata is not None:
            message = {"role": "assistant", "metadata": self.metadata, "content": self.content}
        else:
            message = {"role": "assistant", "content": self.text}
        return message | ({"reasoning_content": self.reasoning} if self.reasoning else {})


class ReplyStream(Protocol):
    """A reply as it streams: what to show of each chunk now; reasoning apart (take_reasoning)."""

    @property
    def held(self) -> bool:
        """The reply may be a call: nothing of it is shown until it is finished."""

    @property
    def reasoning(self) -> bool:
        """The model is still reasoning (what it writes now is thought, not reply)."""

    def feed(self, chunk: str) -> str: ...

    def take_reasoning(self) -> str:
        """Reasoning written since the last call ("" for a family that does not reason)."""

    def end(self) -> str:
        """What is left to show once the reply is over."""


class ReplyFormat(Protocol):
    tool_types: tuple[str, ...]  # the tool types its template lists (function and built-in tools)
    built_in: BuiltInTools

    def with_documents(self, documents: Documents, question: str) -> str:
        """The user message's text that hands the model `documents`, then asks `question`."""

    def valid_function_name(self, name: str) -> bool: ...

    def stream(self, tools: Tools | None, prefix: str = "") -> ReplyStream:
        """`prefix`: reply text the prompt already holds (what the template's generation prompt writes after
        its last markup, e.g. GLM-Z1's `\n<think>`, and any text prefilled to force a shape)."""

    def skip_reasoning(self, prefix: str) -> str:
        """Text that, prefilled after `prefix`, ends the reasoning it opened: for replies a grammar holds to
        a shape from their first token ("" for a family that does not reason)."""

    def finish(self, text: str, tools: Tools | None, call_ended: bool, prompted: str = "") -> Reply:
        """The reply, decided: a call only if it is well formed and `call_ended` (the model ended it
        as a call, or a grammar forced it); else text. `text`: the whole reply, beginning with
        `prompted`, the part of it the prompt already held (see stream)."""

    def template_messages(self, messages: Sequence[Mapping[str, Any]], tools: Tools | None) -> list[Message]:
        """OpenAI-style messages (calls, tool results and a user message's `documents` included) as the
        family's template takes them."""

    def answer_grammar(self, answer_rule: str) -> str:
        """A GBNF root for an answer whose content is `answer_rule`."""

    def call_grammar(self, calls: Mapping[str, str], named: bool) -> str:
        """A GBNF root for a call of one of `calls` (function name -> its arguments' rule). `named`: the
        only function's name is already prefilled (see call_prefix), so only the arguments follow."""

    def call_prefix(self, name: str) -> str:
        """Reply text that, prefilled, makes the reply a call of `name`."""

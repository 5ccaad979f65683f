"""GLM-4-9B's reply format: after <|assistant|> the model writes `{metadata}\\n{content}`.

An answer has empty metadata; a call has the tool's name there: a function's JSON arguments, or a
built-in tool's text (`python` code, a `simple_browser` action) as content, and is ended by
<|observation|>. A tool's result comes back as an observation message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from glm4_local.core.families import glm4_forms
from glm4_local.core.families.replies import BuiltInTools, Documents, Message, Reply, ToolCall, Tools

CALL_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")
# GLM-4's built-in tools ("All Tools"); THUDM's image model is a cloud service: never offered here (it
# would not run, and nothing leaves the machine)
BUILT_IN = BuiltInTools(code="python", browser="simple_browser", citation=glm4_forms.CITATION,
                        not_offered=("cogview",))
TOOL_TYPES = ("function", *BUILT_IN.names)  # GLM-4's template knows these


def tool_names(tools: Tools) -> set[str]:
    return {t["function"]["name"] if t.get("type") == "function" else str(t.get("type")) for t in tools}


def may_be_call(first_line: str, tools: Tools | None) -> bool:
    """Whether a reply's first line could name a tool (else it is just the first line of text).

    Without tools GLM-4 has nothing to call, so its replies are text whatever their first line.
    """
    return bool(tools) and bool(CALL_NAME.fullmatch(first_line.strip()))


class ReplyText:
    """A GLM-4 reply as it streams: what to show of it now. The metadata line is never shown; an
    answer's content streams; a reply whose first line may name a tool is held back whole (a call,
    or a malformed one shown as text once finished)."""

    def __init__(self, tools: Tools | None, prefix: str = "") -> None:
        self.tools = tools
        self.head = prefix
        self.mode: str | None = None  # None: first line not seen yet; "text"; "held"

    @property
    def held(self) -> bool:
        return self.mode == "held"

    @property
    def reasoning(self) -> bool:
        return False  # GLM-4-9B does not reason aloud

    def feed(self, chunk: str) -> str:
        if self.mode == "text":
            return chunk
        self.head += chunk
        if self.mode == "held":
            return ""
        metadata, newline, rest = self.head.partition("\n")
        if not newline:
            # a first line that can no longer name a tool is text now: held to its newline, its tokens
            # would stream as one chunk and stop strings in it would end nothing until then
            if metadata.strip() and not may_be_call(metadata, self.tools):
                self.mode = "text"
                return self.head
            return ""
        if not metadata.strip():
            self.mode = "text"
            return rest
        if may_be_call(metadata, self.tools):
            self.mode = "held"
            return ""
        self.mode = "text"  # text that just lacks GLM-4's leading newline
        return self.head

    def end(self) -> str:
        return self.head if self.mode is None else ""

    def take_reasoning(self) -> str:
        return ""


def parse_reply(generated: str, tools: Tools | None) -> Reply:
    """Split the generated `{metadata}\\n{content}` into an answer or a well-formed call (or text
    that looked like a call, with the reason it is not one)."""
    metadata, newline, content = generated.partition("\n")
    if not newline:
        return Reply(generated)
    if not metadata.strip():
        return Reply(content)
    if not tools or not may_be_call(metadata, tools):
        return Reply(generated)
    kept = {"metadata": metadata, "content": content}
    name = metadata.strip()
    if name not in tool_names(tools):
        return Reply(generated, problem=f"the model called unknown tool {name!r}", **kept)
    if name in {str(t.get("type")) for t in tools if t.get("type") != "function"}:
        return Reply(generated, ToolCall(name, content))  # built-in tools (python) take free text
    try:
        json.loads(content)
    except json.JSONDecodeError as e:
        return Reply(generated, problem=f"arguments for {name!r} are not valid JSON ({e.msg})",
                     partial_call=ToolCall(name, content), **kept)
    return Reply(generated, ToolCall(name, content))


def finish_reply(generated: str, tools: Tools | None, call_ended: bool) -> Reply:
    """The one place that decides whether a finished reply is a call."""
    reply = parse_reply(generated, tools)
    if reply.tool_call is None or call_ended:
        return reply
    metadata, _, content = generated.partition("\n")
    return Reply(generated, None, "the model's tool call was cut off", metadata, content, reply.tool_call)


def to_glm_messages(messages: Sequence[Mapping[str, Any]], tools: Tools | None = None) -> list[Message]:
    """OpenAI-style messages (and tools) to GLM-4's message form.

    Tools become a first system message with empty content that carries them; an assistant tool call
    becomes metadata = function name, content = arguments verbatim; a tool message becomes an
    observation; a user message's documents go before its text, in GLM-4's form. Everything else passes
    through unchanged.
    """
    out: list[Message] = [{"role": "system", "content": "", "tools": list(tools)}] if tools else []
    for message in messages:
        role = message.get("role")
        if role == "tool":  # a built-in tool's result carries its metadata (browser_result, quote_result ...)
            metadata = {"metadata": message["metadata"]} if message.get("metadata") else {}
            out.append({"role": "observation", **metadata, "content": message.get("content")})
        elif role == "assistant" and message.get("tool_calls"):
            if message.get("content"):
                out.append({"role": "assistant", "content": message["content"]})
            for call in message["tool_calls"]:
                function = call.get("function", {})
                out.append({"role": "assistant", "metadata": function.get("name", ""),
                            "content": function.get("arguments", "")})
        elif role == "user" and message.get("documents"):
            content = glm4_forms.with_documents(message["documents"], message.get("content") or "")
            out.append({k: v for k, v in message.items() if k != "documents"} | {"content": content})
        else:
            out.append(dict(message))
    return out


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes as JSON does


class Glm4Replies:
    """GLM-4-9B's ReplyFormat (see core/families/replies.py)."""

    tool_types = TOOL_TYPES
    built_in = BUILT_IN

    def with_documents(self, documents: Documents, question: str) -> str:
        return glm4_forms.with_documents(documents, question)

    def valid_function_name(self, name: str) -> bool:
        return bool(CALL_NAME.fullmatch(name))

    def stream(self, tools: Tools | None, prefix: str = "") -> ReplyText:
        return ReplyText(tools, prefix)

    def finish(self, text: str, tools: Tools | None, call_ended: bool, prompted: str = "") -> Reply:
        return finish_reply(text, tools, call_ended)

    def skip_reasoning(self, prefix: str) -> str:
        return ""

    def template_messages(self, messages: Sequence[Mapping[str, Any]], tools: Tools | None) -> list[Message]:
        return to_glm_messages(messages, tools)

    def answer_grammar(self, answer_rule: str) -> str:
        return f'root ::= "\\n" {answer_rule}'

    def call_grammar(self, calls: Mapping[str, str], named: bool) -> str:
        if named:
            return f"root ::= {next(iter(calls.values()))}"
        return "root ::= " + " | ".join(f"{_literal(name + chr(10))} {rule}" for name, rule in calls.items())

    def call_prefix(self, name: str) -> str:
        return name + "\n"


GLM4_REPLIES = Glm4Replies()

"""GLM-4-0414's reply format: GLM-4-9B's (`{metadata}\\n{content}` after <|assistant|>, a call ended by
<|observation|>), with GLM-Z1's reasoning in front of it.

A reasoning model's template opens the reply with `<think>` (its generation prompt ends
`<|assistant|>\\n<think>`): what the model writes up to `</think>` is its reasoning, shown apart and
never fed back (the template keeps only what follows `</think>` of earlier turns), and what follows is
read as a GLM-4 reply. The 0414 templates list functions only: no built-in tools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from glm4_local.core.families import glm4_forms, glm4_replies
from glm4_local.core.families.replies import BuiltInTools, Documents, Message, Reply, Tools

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def opens_reasoning(prefix: str) -> bool:
    """Whether reply text already in the prompt leaves the model inside a `<think>` block."""
    return prefix.rfind(THINK_OPEN) > prefix.rfind(THINK_CLOSE)


def _held_tail(text: str) -> int:
    """Characters at the end of `text` that may be the start of `</think>` (held until decided)."""
    return max((n for n in range(1, len(THINK_CLOSE)) if text.endswith(THINK_CLOSE[:n])), default=0)


class ReasoningReply:
    """A reply as it streams: reasoning (pulled with `take_reasoning`) until `</think>`, then a GLM-4 reply."""

    def __init__(self, tools: Tools | None, prefix: str) -> None:
        self.thinking = opens_reasoning(prefix)
        after = prefix[prefix.rfind(THINK_CLOSE) + len(THINK_CLOSE):] if THINK_CLOSE in prefix else ""
        self.answer = glm4_replies.ReplyText(tools, after if not self.thinking else "")
        self.pending = ""  # reasoning text not handed out yet
        self.tail = ""  # what may be the start of </think>

    @property
    def held(self) -> bool:
        return self.answer.held

    @property
    def reasoning(self) -> bool:
        return self.thinking

    def feed(self, chunk: str) -> str:
        if not self.thinking:
            return self.answer.feed(chunk)
        text = self.tail + chunk
        end = text.find(THINK_CLOSE)
        if end < 0:
            keep = _held_tail(text)
            self.pending += text[: len(text) - keep]
            self.tail = text[len(text) - keep:]
            return ""
        self.pending += text[:end]
        self.thinking, self.tail = False, ""
        return self.answer.feed(text[end + len(THINK_CLOSE):])

    def take_reasoning(self) -> str:
        taken, self.pending = self.pending, ""
        return taken

    def end(self) -> str:
        if self.thinking:  # cut off while reasoning: what was held is reasoning too
            self.pending += self.tail
            self.tail = ""
            return ""
        return self.answer.end()


class Glm4_0414Replies:
    """GLM-4-0414's ReplyFormat (see core/families/replies.py)."""

    tool_types = ("function",)
    built_in = BuiltInTools()

    def with_documents(self, documents: Documents, question: str) -> str:
        return glm4_forms.with_documents(documents, question)

    def valid_function_name(self, name: str) -> bool:
        return glm4_replies.GLM4_REPLIES.valid_function_name(name)

    def stream(self, tools: Tools | None, prefix: str = "") -> ReasoningReply:
        return ReasoningReply(tools, prefix)

    def finish(self, text: str, tools: Tools | None, call_ended: bool, prompted: str = "") -> Reply:
        start = prompted.rfind(THINK_OPEN)  # the prompt opened the thoughts (and may have closed them: a shape)
        if start < 0:
            return glm4_replies.finish_reply(text, tools, call_ended)
        reasoning, closed, rest = text[start + len(THINK_OPEN):].partition(THINK_CLOSE)
        if not closed:
            return Reply("", reasoning=reasoning)  # cut off while reasoning: no answer yet
        return replace(glm4_replies.finish_reply(rest, tools, call_ended), reasoning=reasoning)

    def template_messages(self, messages: Sequence[Mapping[str, Any]], tools: Tools | None) -> list[Message]:
        """As GLM-4's, less the reasoning of earlier turns (the templates drop thoughts, and GLM-Z1's keeps
        only what follows `</think>` of a content that holds them)."""
        kept = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
        return glm4_replies.to_glm_messages(kept, tools)

    def skip_reasoning(self, prefix: str) -> str:
        return THINK_CLOSE if opens_reasoning(prefix) else ""

    def answer_grammar(self, answer_rule: str) -> str:
        return glm4_replies.GLM4_REPLIES.answer_grammar(answer_rule)

    def call_grammar(self, calls: Mapping[str, str], named: bool) -> str:
        return glm4_replies.GLM4_REPLIES.call_grammar(calls, named)

    def call_prefix(self, name: str) -> str:
        return glm4_replies.GLM4_REPLIES.call_prefix(name)


GLM4_0414_REPLIES = Glm4_0414Replies()

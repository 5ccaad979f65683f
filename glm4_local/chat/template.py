"""Prompts: the family's messages (see its reply format) -> the model's own Jinja template.

The prompt is rendered by the model's chat template itself (from the GGUF), exactly as transformers
renders it, so its bytes match the real thing for every model variant. Conversation strings are swapped
for private markers while rendering and put back afterwards; that tells us which spans came from the
conversation (always tokenized as plain text) and which from the template (whose markup, such as
<|user|>, becomes special tokens). Typed or pasted text can never open a new role. A message's content
keeps its own text and only the markup in it is swapped, because templates work on it (GLM-Z1's strips
it and keeps what follows `</think>`) and must see what transformers' rendering sees.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from glm4_local.chat.jinja_render import RenderFailure, render_source
from glm4_local.chat.template_worker import TemplatePool
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.families.registry import FAMILIES

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "observation")  # GLM-4's roles, as its template names them


class TemplateRenderError(Glm4LocalError):
    """A conversation the template cannot render."""


@dataclass(frozen=True)
class Piece:
    text: str
    special: bool  # True: template markup to become one special token


_WORKERS = TemplatePool()


@cache
def _published() -> frozenset[str]:
    return frozenset(t for f in FAMILIES for t in f.published_templates.values())


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template, and the special tokens its markup may write (no others ever).

    The published templates render here; any other runs in the bounded worker process.
    """

    source: str
    markup: tuple[str, ...]
    origin: str = "the chat template"  # how messages name it, e.g. "the chat template of x.gguf"
    tool_types: tuple[str, ...] = ()  # tool types the template branches on (kept as they are)

    @classmethod
    def of(cls, family: ModelFamily, source: str | None = None, origin: str | None = None) -> ChatTemplate:
        """`source` (a GGUF's own template), else the family's published one."""
        types = family.replies.tool_types
        if source:
            return cls(source, family.markup_tokens, origin or "the model's chat template", types)
        if family.published_template is None:
            raise TemplateRenderError(f"{origin or 'the model'} carries no chat template, and {family.name} models "
                                      "have none published here: add the checkpoint's own with `glm4-local repair "
                                      "MODEL --template chat_template.jinja`")
        return cls(family.published_template, family.markup_tokens, f"{family.name}'s published chat template",
                   types)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            if self.source in _published():
                return render_source(self.source, messages, add_generation_prompt)
            return _WORKERS.render(self.source, messages, add_generation_prompt)
        except RenderFailure as e:
            raise TemplateRenderError(f"{self.origin} {e}") from None

    @cached_property
    def reply_head(self) -> str:
        """Reply text the generation prompt writes after its last markup: GLM-Z1's "\n<think>" (the model
        reasons first), "" for GLM-4's bare <|assistant|>."""
        try:
            pieces = self.pieces([{"role": "user", "content": "?"}])
        except TemplateRenderError:  # a template that wants more than one user message: it says so when used
            return ""
        tail: list[str] = []
        for piece in reversed(pieces):
            if piece.special:
                break
            tail.append(piece.text)
        return "".join(reversed(tail))

    def text(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt string, exactly as transformers' apply_chat_template renders it."""
        return "".join(p.text for p in self.pieces(messages, add_generation_prompt))

    def pieces(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[Piece]:
        """The prompt as pieces: template markup (special) and text, in order."""
        markers = _Markers(self.markup)
        guarded = [_guard_message(m, markers, self.tool_types) for m in messages]
        rendered = self._render(guarded, add_generation_prompt)
        if not rendered.strip():
            raise TemplateRenderError(f"{self.origin} rendered an empty prompt for this conversation")
        return markers.split(rendered)


class _Markers:
    """Private-use placeholders for conversation strings, and the way back to the originals."""

    def __init__(self, markup: tuple[str, ...]) -> None:
        self.markup = re.compile("(" + "|".join(re.escape(t) for t in markup) + ")")
        self.nonce = secrets.token_hex(4)
        self.originals: dict[str, str] = {}
        self.pattern = re.compile("(\ue000" + self.nonce + r":\d+" + "\ue001)")

    def protect(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value  # keeps the template's truthiness and rendering of None / "" / non-strings
        marker = f"\ue000{self.nonce}:{len(self.originals)}\ue001"
        self.originals[marker] = value
        return marker

    def protect_markup(self, text: str) -> str:
        """`text` with each markup token in it swapped for a marker (the rest stays text a template can work on)."""
        return self.markup.sub(lambda m: self.protect(m.group(0)), text)

    def protect_all(self, value: Any) -> Any:
        """Every string at any depth, dictionary keys included: user data, never markup."""
        if isinstance(value, dict):
            return {self.protect(k): self.protect_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.protect_all(v) for v in value]
        return self.protect(value)

    def split(self, rendered: str) -> list[Piece]:
        pieces: list[Piece] = []
        parts = self.pattern.split(rendered)
        for i, part in enumerate(parts):
            if i % 2:
                original = self.originals[part]
                # inside tojson output the string sits between quotes and must be JSON-escaped
                quoted = parts[i - 1].endswith('"') and i + 1 < len(parts) and parts[i + 1].startswith('"')
                pieces.append(Piece(json.dumps(original, ensure_ascii=False)[1:-1] if quoted else original, False))
                continue
            for j, chunk in enumerate(self.markup.split(part)):
                if chunk:
                    pieces.append(Piece(chunk, special=bool(j % 2)))
        return pieces


# Keys a template reads by name, so they stay as they are; their values are still protected.
_TOOL_KEYS = frozenset({"type", "function"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})


def _guard_message(message: Mapping[str, Any], markers: _Markers, tool_types: tuple[str, ...]) -> dict[str, Any]:
    """A message with everything but its role (which the template branches on) made into data."""
    guarded: dict[str, Any] = {}
    for key, value in message.items():
        if key == "role" and value in ROLES:
            guarded[key] = value
        elif key == "content" and isinstance(value, str):
            guarded[key] = markers.protect_markup(value)
        elif key == "tools" and isinstance(value, list):
            guarded[key] = [_protect_tool(t, markers, tool_types) for t in value]
        else:
            guarded[key] = markers.protect_all(value)
    return guarded


def _protect_tool(tool: Any, markers: _Markers, tool_types: tuple[str, ...]) -> Any:
    """A tool with every string made into data, except its type and the key names templates read."""
    if not isinstance(tool, dict):
        return markers.protect_all(tool)
    guarded: dict[Any, Any] = {}
    for key, value in tool.items():
        if key == "type" and value in tool_types:
            guarded[key] = value
        elif key == "function" and isinstance(value, dict):
            guarded[key] = {(k if k in _FUNCTION_KEYS else markers.protect(k)): markers.protect_all(v)
                            for k, v in value.items()}
        else:
            guarded[key if key in _TOOL_KEYS else markers.protect(key)] = markers.protect_all(value)
    return guarded


def merged_text(pieces: Sequence[Piece]) -> list[Piece]:
    """Adjacent text pieces joined, as a tokenizer sees the text between two special tokens."""
    out: list[Piece] = []
    for piece in pieces:
        if out and not piece.special and not out[-1].special:
            out[-1] = Piece(out[-1].text + piece.text, special=False)
        else:
            out.append(piece)
    return out


MAX_TEMPLATE_CHARS = 256 * 1024  # GLM-4's own templates are ~4 KB
SAMPLE_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "metadata": "get_weather", "content": '{"city": "Paris"}'},
    {"role": "observation", "content": '{"sky": "clear"}'},
    {"role": "assistant", "content": "It is clear."},
    {"role": "user", "content": "谢谢"},
]


def check_template(family: ModelFamily, source: str, origin: str) -> None:
    """TemplateRenderError unless `source` renders a sample conversation (tools, a call and its result
    included) as chat would run it: bounded in time and memory, in the worker process."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateRenderError(f"{origin} is {len(source):,} characters; a chat template of more than "
                                  f"{MAX_TEMPLATE_CHARS:,} is refused")
    if not source.strip():
        raise TemplateRenderError(f"{origin} is empty")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object", "properties": {}}}}]
    template = ChatTemplate(source, family.markup_tokens, origin, family.replies.tool_types)
    template.pieces([{"role": "system", "content": "", "tools": tools}, *SAMPLE_CONVERSATION])

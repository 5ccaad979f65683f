"""Prompts: OpenAI-style messages -> GLM-4 messages -> the model's own Jinja template.

The prompt is rendered by the model's chat template itself (from the GGUF), exactly as transformers
renders it, so its bytes match the real thing for every model variant. Message contents and metadata
are swapped for private markers while rendering and put back afterwards; that tells us which spans
came from the conversation (always tokenized as plain text) and which from the template (whose
markup, such as <|user|>, becomes special tokens). Typed or pasted text can never open a new role.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.model_family import ModelFamily

Message = dict[str, Any]


class TemplateRenderError(Glm4LocalError):
    """A conversation the template cannot render."""


@dataclass(frozen=True)
class Piece:
    text: str
    special: bool  # True: template markup to become one special token


def to_glm_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
                    ) -> list[Message]:
    """OpenAI-style messages (and tools) to GLM-4's message form.

    Tools become a first system message with empty content that carries them; an assistant tool call
    becomes metadata = function name, content = arguments verbatim; a tool message becomes an
    observation. Everything else passes through unchanged.
    """
    out: list[Message] = [{"role": "system", "content": "", "tools": list(tools)}] if tools else []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            out.append({"role": "observation", "content": message.get("content")})
        elif role == "assistant" and message.get("tool_calls"):
            if message.get("content"):
                out.append({"role": "assistant", "content": message["content"]})
            for call in message["tool_calls"]:
                function = call.get("function", {})
                out.append({"role": "assistant", "metadata": function.get("name", ""),
                            "content": function.get("arguments", "")})
        else:
            out.append(dict(message))
    return out


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' tojson: plain json.dumps, keys in order, no HTML escaping (unlike Jinja's)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env


@lru_cache(maxsize=8)
def _compiled(template: str) -> Template:
    try:
        return _environment().from_string(template)
    except TemplateError as e:
        raise TemplateRenderError(f"the model's chat template is not valid Jinja: {e}") from e


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template, and the special tokens its markup may write (no others ever)."""

    source: str
    markup: tuple[str, ...]

    @classmethod
    def of(cls, family: ModelFamily, source: str | None = None) -> ChatTemplate:
        """`source` (a GGUF's own template), else the family's published one."""
        return cls(source or family.published_template, family.markup_tokens)

    def text(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt string, exactly as transformers' apply_chat_template renders it."""
        return "".join(p.text for p in self.pieces(messages, add_generation_prompt))

    def pieces(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[Piece]:
        """The prompt as pieces: template markup (special) and text, in order."""
        markers = _Markers(self.markup)
        guarded = []
        for m in messages:
            g = {**m, **{k: markers.protect(m[k]) for k in ("content", "metadata") if k in m}}
            if isinstance(m.get("tools"), list):
                g["tools"] = [_protect_tool(t, markers) for t in m["tools"]]
            guarded.append(g)
        try:
            rendered = _compiled(self.source).render(messages=guarded, add_generation_prompt=add_generation_prompt)
        except TemplateError as e:
            raise TemplateRenderError(f"chat template failed on this conversation: {e}") from e
        except (TypeError, KeyError, AttributeError) as e:
            raise TemplateRenderError(f"conversation does not fit the chat template: {e}") from e
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


def _protect_tool(tool: Any, markers: _Markers) -> Any:
    """A tool with every string value of its function (names, descriptions) replaced by markers."""
    if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
        return tool

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return markers.protect(value)

    return {**tool, "function": walk(tool["function"])}


def merged_text(pieces: Sequence[Piece]) -> list[Piece]:
    """Adjacent text pieces joined, as a tokenizer sees the text between two special tokens."""
    out: list[Piece] = []
    for piece in pieces:
        if out and not piece.special and not out[-1].special:
            out[-1] = Piece(out[-1].text + piece.text, special=False)
        else:
            out.append(piece)
    return out

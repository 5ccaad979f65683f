"""Render a chat template the way transformers' apply_chat_template does: sandboxed Jinja with
trim_blocks/lstrip_blocks, loop controls, transformers' `tojson` and `raise_exception`.

Kept free of glm4-local imports: the template worker process runs it on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jinja2 itself is imported when a template is first rendered: most runs never render one
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 32 * 1024 * 1024  # a prompt for a million-token context is a few MB


class RenderFailure(Exception):
    """The template could not be compiled or rendered; the message says why."""


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' tojson: plain json.dumps, keys in order, no HTML escaping (unlike Jinja's)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env


@lru_cache(maxsize=8)
def _compiled(source: str) -> Template:
    from jinja2 import TemplateError

    try:
        return _environment().from_string(source)
    except TemplateError as e:
        raise RenderFailure(f"is not valid Jinja ({e})") from e
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError, ArithmeticError) as e:
        raise RenderFailure(f"cannot be compiled ({type(e).__name__})") from e


def render_source(source: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
                  limit: int = MAX_OUTPUT_CHARS) -> str:
    """The rendered prompt; RenderFailure for a template that fails, or whose output passes `limit`."""
    from jinja2 import TemplateError

    template = _compiled(source)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(messages=messages, add_generation_prompt=add_generation_prompt):
            size += len(chunk)
            if size > limit:
                raise RenderFailure(f"rendered more than {limit:,} characters")
            chunks.append(chunk)
    except RenderFailure:
        raise
    except TemplateError as e:
        raise RenderFailure(f"failed on this conversation ({e})") from e
    except RecursionError as e:
        raise RenderFailure("recursed too deeply") from e
    except MemoryError as e:
        raise RenderFailure("ran out of memory") from e
    except Exception as e:  # a template is code: it can raise anything (OverflowError, ZeroDivisionError, ...)
        raise RenderFailure(f"failed on this conversation ({type(e).__name__}: {e})") from e
    return "".join(chunks)

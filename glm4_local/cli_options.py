"""Command-line options that several commands share, declared once (chat and serve run a model the same way).

Each group of flags reaches its command as one object (`with_options`): RUNTIME a RuntimeOptions,
TOOLS a ToolOptions, SERVE a ServeOptions. The tools' and the server's flags are made from their
dataclasses' fields (default, help and checks declared there, once).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from glm4_local.chat.options import DEFAULT_BATCH, DEFAULT_CTX, RuntimeOptions
from glm4_local.cli_errors import fail, parsed
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama.door import CACHE_TYPES
from glm4_local.core.llama.speculation import DEFAULT_DRAFT_MAX, speculation_of
from glm4_local.server.options import ServeOptions
from glm4_local.tools.options import ToolOptions

ModelArg = Annotated[str | None, typer.Argument(help="GGUF path or name in ./models or $GLM4_LOCAL_MODELS "
                                                "(default: the newest there).")]
Ctx = Annotated[str, typer.Option("--ctx", help=f"Context tokens (per conversation; default {DEFAULT_CTX:,} or the "
                                  "most that fits this machine's memory, or what a resumed conversation was held in), "
                                  "'max' for the model's trained context, or 'auto' for the most that fits.",
                                  show_default=False)]
GpuLayers = Annotated[str, typer.Option("--gpu-layers", help="Layers to offload: N, 'all' or 'auto'.")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores).")]
Batch = Annotated[int, typer.Option("--batch", help="Prompt batch size.")]
FlashAttn = Annotated[bool | None, typer.Option("--flash-attn/--no-flash-attn", help="Flash attention (less "
                                                "memory for long contexts; default: on where the machine runs it "
                                                "no slower, as llama-server's 'auto').", show_default=False)]
CacheTypeK = Annotated[str, typer.Option("--cache-type-k", metavar="TYPE", help="KV cache type for keys: "
                                         + ", ".join(CACHE_TYPES))]
CacheTypeV = Annotated[str, typer.Option("--cache-type-v", metavar="TYPE", help="KV cache type for values: "
                                         + ", ".join(CACHE_TYPES))]
Mlock = Annotated[bool, typer.Option("--mlock", help="Lock the model in RAM (never swapped out).")]
Speculate = Annotated[str, typer.Option("--speculate", metavar="auto|off", help="Speculative decoding by "
                                        "prompt lookup: draft what repeats the context, verify it in one batch "
                                        "(same output, faster on copy-heavy replies; 'auto' stops drafting where "
                                        "it does not help).")]
DraftMax = Annotated[int, typer.Option("--draft-max", metavar="K", help="Most tokens drafted per step when "
                                       "speculating.")]
NoMmap = Annotated[bool, typer.Option("--no-mmap", help="Read the whole model into memory instead of "
                                      "mapping the file.")]
HugePages = Annotated[bool, typer.Option("--huge-pages", help="Read the weights into 2 MiB pages (Linux; for a "
                                         "filesystem that keeps a mapped model in 4 KiB ones, e.g. tmpfs; the "
                                         "kernel can then no longer drop them under memory pressure; `glm4-local "
                                         "doctor` says if this machine has them).")]


def _option(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


# how a model runs: context, offload, threads, batches, caches, memory (see chat.options.RuntimeOptions)
RUNTIME_OPTIONS: tuple[inspect.Parameter, ...] = (
    _option("ctx", Ctx, ""), _option("gpu_layers", GpuLayers, "auto"),
    _option("threads", Threads, None), _option("batch", Batch, DEFAULT_BATCH),
    _option("flash_attn", FlashAttn, None), _option("cache_type_k", CacheTypeK, "f16"),
    _option("cache_type_v", CacheTypeV, "f16"), _option("mlock", Mlock, False), _option("no_mmap", NoMmap, False),
    _option("huge_pages", HugePages, False),
    _option("speculate", Speculate, "auto"), _option("draft_max", DraftMax, DEFAULT_DRAFT_MAX),
)


def runtime_options_of(ctx: str, gpu_layers: str, threads: int | None, batch: int, flash_attn: bool | None,
                       cache_type_k: str, cache_type_v: str, mlock: bool, no_mmap: bool, huge_pages: bool,
                       speculate: str, draft_max: int) -> RuntimeOptions:
    """How chat and serve run a model, from their shared options (RUNTIME_OPTIONS)."""
    from glm4_local.chat import options as opts

    return opts.RuntimeOptions(
        ctx=parsed("--ctx", opts.parse_context_size, ctx or str(DEFAULT_CTX)), ctx_given=bool(ctx),
        gpu_layers=parsed("--gpu-layers", opts.parse_gpu_layers, gpu_layers),
        threads=threads, batch=batch, flash_attn=flash_attn,
        cache_type_k=parsed("--cache-type-k", opts.parse_cache_type, cache_type_k),
        cache_type_v=parsed("--cache-type-v", opts.parse_cache_type, cache_type_v), mlock=mlock, mmap=not no_mmap,
        huge_pages=parsed("--huge-pages", opts.parse_huge_pages, huge_pages),
        speculation=parsed("--speculate/--draft-max", lambda mode: speculation_of(mode, draft_max), speculate),
    )


@dataclass(frozen=True)
class OptionGroup:
    """Flags a command receives as one object: `argument` gets `build(**values of the parameters)`."""

    argument: str
    parameters: tuple[inspect.Parameter, ...]
    build: Callable[..., Any]


RUNTIME = OptionGroup("runtime", RUNTIME_OPTIONS, runtime_options_of)


def _field_type(owner: type, item: dataclasses.Field[Any]) -> Any:
    """A field's annotation as a type: our own dataclasses' annotations are strings (postponed evaluation),
    resolved in their module."""
    hint = item.type
    return eval(hint, vars(sys.modules[owner.__module__])) if isinstance(hint, str) else hint


def fields_group(argument: str, owner: type, *names: str) -> OptionGroup:
    """Flags for these fields of the dataclass `owner`, each with the default, help and checks its field
    declares (metadata made by tools.options.flag); a repeatable flag fills a tuple field."""
    fields = {item.name: item for item in dataclasses.fields(owner)}
    repeated = {name for name in names if typing.get_origin(_field_type(owner, fields[name])) is tuple}
    parameters = []
    for name in names:
        item = fields[name]
        meta = item.metadata
        hint, default = _field_type(owner, item), item.default
        if name in repeated:
            hint, default = list[str] | None, None
        option = typer.Option(*meta["flag"], help=meta["help"], metavar=meta["metavar"], **meta["more"])
        parameters.append(_option(name, Annotated[hint, option], default))

    def build(**values: Any) -> Any:
        return owner(**(values | {name: tuple(values[name] or ()) for name in repeated}))

    return OptionGroup(argument, tuple(parameters), build)


def with_options(*groups: OptionGroup) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the groups' flags: Typer sees them as flags, the command receives each group as one
    argument (its `argument`), built from them."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        taken = {group.argument for group in groups}
        own = [p.replace(annotation=hints[p.name]) for p in signature.parameters.values() if p.name not in taken]
        flags = [p for group in groups for p in group.parameters]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            built = {group.argument: parsed_group(group, {p.name: kwargs.pop(p.name) for p in group.parameters})
                     for group in groups}
            command(**kwargs, **built)

        del wrapper.__wrapped__  # Typer reads the signature below, not the command's own
        wrapper.__signature__ = signature.replace(parameters=[*own, *flags])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *flags)}
        return wrapper

    return decorate


def parsed_group(group: OptionGroup, values: dict[str, Any]) -> Any:
    """The group's object; values its owner refuses are the command line's one-line error."""
    try:
        return group.build(**values)
    except Glm4LocalError as e:
        raise fail(str(e)) from None


TOOL_FLAGS = ("python", "python_timeout", "browser", "allow_private", "mcp")  # what chat and serve both run
TOOLS = fields_group("tools", ToolOptions, *TOOL_FLAGS)
CHAT_TOOLS = fields_group("tools", ToolOptions, *TOOL_FLAGS, "unconfined")
SERVE = fields_group("serving", ServeOptions, *(f.name for f in dataclasses.fields(ServeOptions) if f.name != "tools"))

"""Command-line options that several commands share, declared once (chat and serve run a model the same way).

RUNTIME_OPTIONS are added to a command by cli.with_runtime_options, which hands the command one
RuntimeOptions instead of eleven flags.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from glm4_local.chat.options import DEFAULT_BATCH, DEFAULT_CTX, RuntimeOptions
from glm4_local.cli_errors import parsed
from glm4_local.core.llama.door import CACHE_TYPES
from glm4_local.core.llama.speculation import DEFAULT_DRAFT_MAX, speculation_of

ModelArg = Annotated[str | None, typer.Argument(help="GGUF path or name in ./models or $GLM4_LOCAL_MODELS "
                                                "(default: the newest there).")]
Ctx = Annotated[str, typer.Option("--ctx", help=f"Context tokens (per conversation; default {DEFAULT_CTX}, or "
                                  "what a resumed conversation was held in), 'max' for the model's trained context, "
                                  "or 'auto' for the most that fits this machine's memory.", show_default=False)]
GpuLayers = Annotated[str, typer.Option("--gpu-layers", help="Layers to offload: N, 'all' or 'auto'.")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores).")]
Batch = Annotated[int, typer.Option("--batch", help="Prompt batch size.")]
FlashAttn = Annotated[bool, typer.Option("--flash-attn", help="Use flash attention (less memory for long "
                                         "contexts; helps most on GPUs).")]
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


def _option(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


# how a model runs: context, offload, threads, batches, caches, memory (see chat.options.RuntimeOptions)
RUNTIME_OPTIONS: tuple[inspect.Parameter, ...] = (
    _option("ctx", Ctx, ""), _option("gpu_layers", GpuLayers, "auto"),
    _option("threads", Threads, None), _option("batch", Batch, DEFAULT_BATCH),
    _option("flash_attn", FlashAttn, False), _option("cache_type_k", CacheTypeK, "f16"),
    _option("cache_type_v", CacheTypeV, "f16"), _option("mlock", Mlock, False), _option("no_mmap", NoMmap, False),
    _option("speculate", Speculate, "auto"), _option("draft_max", DraftMax, DEFAULT_DRAFT_MAX),
)


def runtime_options_of(ctx: str, gpu_layers: str, threads: int | None, batch: int, flash_attn: bool,
                       cache_type_k: str, cache_type_v: str, mlock: bool, no_mmap: bool, speculate: str,
                       draft_max: int) -> RuntimeOptions:
    """How chat and serve run a model, from their shared options (RUNTIME_OPTIONS)."""
    from glm4_local.chat import options as opts

    return opts.RuntimeOptions(
        ctx=parsed("--ctx", opts.parse_context_size, ctx or str(DEFAULT_CTX)), ctx_given=bool(ctx),
        gpu_layers=parsed("--gpu-layers", opts.parse_gpu_layers, gpu_layers),
        threads=threads, batch=batch, flash_attn=flash_attn,
        cache_type_k=parsed("--cache-type-k", opts.parse_cache_type, cache_type_k),
        cache_type_v=parsed("--cache-type-v", opts.parse_cache_type, cache_type_v), mlock=mlock, mmap=not no_mmap,
        speculation=parsed("--speculate/--draft-max", lambda mode: speculation_of(mode, draft_max), speculate),
    )


def with_runtime_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the shared model-running options: Typer sees them as flags, the command receives
    them as one `runtime: RuntimeOptions` argument."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    own = [p.replace(annotation=hints[p.name]) for p in signature.parameters.values() if p.name != "runtime"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        shared = {p.name: kwargs.pop(p.name) for p in RUNTIME_OPTIONS}
        command(**kwargs, runtime=runtime_options_of(**shared))

    del wrapper.__wrapped__  # Typer reads the signature below, not the command's own
    wrapper.__signature__ = signature.replace(parameters=[*own, *RUNTIME_OPTIONS])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *RUNTIME_OPTIONS)}
    return wrapper

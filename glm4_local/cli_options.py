"""Command-line options that several commands share, declared once (chat and serve run a model the same way).

RUNTIME_OPTIONS are added to a command by cli.with_runtime_options, which hands the command one
RuntimeOptions instead of nine flags.
"""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from glm4_local.chat.options import DEFAULT_BATCH, DEFAULT_CTX
from glm4_local.core.llama.door import CACHE_TYPES

ModelArg = Annotated[str | None, typer.Argument(help="GGUF path or name in ./models or $GLM4_LOCAL_MODELS "
                                                "(default: the newest there).")]
Ctx = Annotated[str, typer.Option("--ctx", help="Context tokens (per conversation), or 'max' for the model's "
                                  "trained context.")]
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
NoMmap = Annotated[bool, typer.Option("--no-mmap", help="Read the whole model into memory instead of "
                                      "mapping the file.")]


def _option(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


# how a model runs: context, offload, threads, batches, caches, memory (see chat.options.RuntimeOptions)
RUNTIME_OPTIONS: tuple[inspect.Parameter, ...] = (
    _option("ctx", Ctx, str(DEFAULT_CTX)), _option("gpu_layers", GpuLayers, "auto"),
    _option("threads", Threads, None), _option("batch", Batch, DEFAULT_BATCH),
    _option("flash_attn", FlashAttn, False), _option("cache_type_k", CacheTypeK, "f16"),
    _option("cache_type_v", CacheTypeV, "f16"), _option("mlock", Mlock, False), _option("no_mmap", NoMmap, False),
)

"""Command-line options that several commands share (chat and serve run a model the same way)."""

from __future__ import annotations

from typing import Annotated

import typer

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

"""How to run a model (context, offload, threads, caches): typed, checked once.

Front-ends turn what the user typed into these values with the `parse_*` functions (which raise
ValueError with a message that names no command-line flag), then hand them to `open_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import gguf

from glm4_local.core.llama import huge_pages
from glm4_local.core.llama.door import CACHE_TYPES
from glm4_local.core.llama.speculation import SpeculationSettings

DEFAULT_CTX = 32768  # or the most that fits the machine (the context plan): apps send prompts of 8K+
MIN_CTX = 64
DEFAULT_BATCH = 512

ContextSize = int | Literal["max", "auto"]  # tokens, all the model was trained for, or the most that fits
GpuLayers = int | Literal["all", "auto"]  # auto: all layers when llama.cpp has GPU offload, else none


def parse_context_size(text: str) -> ContextSize:
    if text in ("max", "auto"):
        return text  # type: ignore[return-value]
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{text!r}: give a number of tokens, 'max' or 'auto'") from None
    if n < MIN_CTX:
        raise ValueError(f"{n}: too small (at least {MIN_CTX} tokens)")
    return n


def parse_gpu_layers(text: str) -> GpuLayers:
    if text in ("all", "auto"):
        return text  # type: ignore[return-value]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r}: give a number, 'all' or 'auto'") from None


def parse_cache_type(text: str) -> gguf.GGMLQuantizationType:
    try:
        return CACHE_TYPES[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r}: choose one of {', '.join(CACHE_TYPES)}") from None


def parse_huge_pages(asked: bool) -> bool:
    """`--huge-pages` where the kernel can give them; elsewhere why not (a ValueError)."""
    if not asked:
        return False
    mode = huge_pages.thp_mode()
    if not huge_pages.available(mode):
        where = "which this system does not have" if mode is None else f"which are set to {mode!r} here"
        raise ValueError(f"needs the kernel's transparent huge pages, {where}")
    return True


def cache_type_name(qtype: gguf.GGMLQuantizationType) -> str:
    return next(name for name, t in CACHE_TYPES.items() if t == qtype)


@dataclass(frozen=True)
class RuntimeOptions:
    ctx: ContextSize = DEFAULT_CTX
    gpu_layers: GpuLayers = "auto"
    threads: int | None = None
    batch: int = DEFAULT_BATCH
    flash_attn: bool | None = None  # None: as the context plan decides (on where the device says it is no
    # slower, as llama-server's "auto"); outside a plan, off
    cache_type_k: gguf.GGMLQuantizationType = CACHE_TYPES["f16"]
    cache_type_v: gguf.GGMLQuantizationType = CACHE_TYPES["f16"]
    mlock: bool = False
    mmap: bool = True
    huge_pages: bool = False  # weights read into 2 MiB pages (core/llama/huge_pages.py); implies no mmap
    prompt_cache: Path | None = None  # a folder keeping long prompts' KV state on disk (None: none)
    prompt_cache_bytes: int = 8 * 2**30  # its size bound
    speculation: SpeculationSettings = field(default_factory=SpeculationSettings)
    ctx_given: bool = True  # False: `ctx` is the default, and a resumed conversation's own context may replace it

    def context_size(self, trained: int) -> int:
        """Tokens of context to allocate: as asked, never more than the model was trained for ("auto" is
        decided by the context plan, which then gives options with a number)."""
        if self.ctx == "auto":
            raise ValueError("an 'auto' context is sized by chat.context_plan first")
        return trained if self.ctx == "max" else min(self.ctx, trained)

    @property
    def flash_attention(self) -> bool:
        """Asked for (or decided by the plan), or needed: llama.cpp keeps a quantized V cache only with flash
        attention."""
        return bool(self.flash_attn) or self.flash_needed

    @property
    def flash_needed(self) -> bool:
        return self.cache_type_v not in (CACHE_TYPES["f16"], CACHE_TYPES["f32"])

    def with_prompt_cache(self, folder: Path | None, gib: float) -> RuntimeOptions:
        """These options keeping long prompts' KV state in `folder`, up to `gib` GiB (0: none)."""
        return replace(self, prompt_cache=folder if gib > 0 else None, prompt_cache_bytes=int(gib * 2**30))


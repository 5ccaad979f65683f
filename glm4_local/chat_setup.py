"""From chat options to a ready ChatEngine: model, context size, offload, sampling defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf

from glm4_local.chat import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, ChatSettings
from glm4_local.default_template import GLM4_CHAT_TEMPLATE
from glm4_local.errors import Glm4LocalError
from glm4_local.gguf_file import check_glm4
from glm4_local.gguf_header import GGUFHeader
from glm4_local.runtime import CACHE_TYPES, ChatRuntime, Sampling, gpu_offload_available, load

K = gguf.Keys
ARCH = "chatglm"
DEFAULT_CTX = 8192


@dataclass(frozen=True)
class RuntimeOptions:
    ctx: str = str(DEFAULT_CTX)  # a number or "max"
    gpu_layers: str = "auto"  # a number, "all" or "auto"
    threads: int | None = None
    batch: int = 512
    flash_attn: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    mlock: bool = False
    mmap: bool = True

    def validate(self) -> None:
        for name, value in (("--cache-type-k", self.cache_type_k), ("--cache-type-v", self.cache_type_v)):
            if value not in CACHE_TYPES:
                raise Glm4LocalError(f"{name} {value!r}: choose one of {', '.join(CACHE_TYPES)}")
        if self.gpu_layers not in ("auto", "all"):
            gpu_layers(self.gpu_layers)  # raises for anything but a number


@dataclass(frozen=True)
class SamplingOptions:
    temp: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class ModelFacts:
    path: Path
    header: GGUFHeader
    train_ctx: int
    n_layer: int
    n_head_kv: int
    head_dim: int
    template: str

    @classmethod
    def read(cls, path: Path) -> ModelFacts:
        header = check_glm4(path)
        n_embd = int(header.get(K.LLM.EMBEDDING_LENGTH.format(arch=ARCH), 0))
        n_head = int(header.get(K.Attention.HEAD_COUNT.format(arch=ARCH), 1))
        return cls(
            path=path, header=header,
            train_ctx=int(header.get(K.LLM.CONTEXT_LENGTH.format(arch=ARCH), DEFAULT_CTX)),
            n_layer=int(header.get(K.LLM.BLOCK_COUNT.format(arch=ARCH), 0)),
            n_head_kv=int(header.get(K.Attention.HEAD_COUNT_KV.format(arch=ARCH), n_head)),
            head_dim=int(header.get(K.Attention.KEY_LENGTH.format(arch=ARCH), n_embd // max(n_head, 1))),
            template=header.get(K.Tokenizer.CHAT_TEMPLATE) or GLM4_CHAT_TEMPLATE,
        )

    def kv_cache_bytes(self, n_ctx: int, type_k: str, type_v: str) -> int:
        per_elem = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
        elems = self.n_layer * n_ctx * self.n_head_kv * self.head_dim
        return int(elems * (per_elem[type_k] + per_elem[type_v]))


def context_size(requested: str, train_ctx: int) -> int:
    if requested == "max":
        return train_ctx
    try:
        n = int(requested)
    except ValueError:
        raise Glm4LocalError(f"--ctx {requested!r}: give a number of tokens or 'max'") from None
    if n < 64:
        raise Glm4LocalError(f"--ctx {n}: too small (at least 64 tokens)")
    return min(n, train_ctx)


def gpu_layers(requested: str) -> int:
    if requested == "all":
        return -1
    if requested == "auto":
        return -1 if gpu_offload_available() else 0
    try:
        return int(requested)
    except ValueError:
        raise Glm4LocalError(f"--gpu-layers {requested!r}: give a number, 'all' or 'auto'") from None


def sampling_settings(facts: ModelFacts, options: SamplingOptions) -> ChatSettings:
    """The GGUF's general.sampling.* defaults (else GLM-4's 0.8 / 0.8), overridden by options."""
    # stored as float32: 0.8 reads back as 0.800000011920929
    temp = round(facts.header.get(K.General.SAMPLING_TEMP, DEFAULT_TEMPERATURE), 6)
    top_p = round(facts.header.get(K.General.SAMPLING_TOP_P, DEFAULT_TOP_P), 6)
    top_k = facts.header.get(K.General.SAMPLING_TOP_K, 0)
    sampling = Sampling(
        temperature=options.temp if options.temp is not None else float(temp),
        top_p=options.top_p if options.top_p is not None else float(top_p),
        top_k=options.top_k if options.top_k is not None else int(top_k),
        min_p=options.min_p if options.min_p is not None else 0.0,
        repeat_penalty=options.repeat_penalty if options.repeat_penalty is not None else 1.0,
    )
    return ChatSettings(sampling, options.max_tokens, options.seed)


def load_runtime(facts: ModelFacts, options: RuntimeOptions, n_ctx: int) -> ChatRuntime:
    options.validate()
    llm = load(
        facts.path, n_ctx=n_ctx, n_gpu_layers=gpu_layers(options.gpu_layers),
        n_threads=options.threads or max(1, os.cpu_count() or 2), n_batch=min(options.batch, n_ctx),
        flash_attn=options.flash_attn, type_k=CACHE_TYPES[options.cache_type_k],
        type_v=CACHE_TYPES[options.cache_type_v], use_mlock=options.mlock, use_mmap=options.mmap,
        header=facts.header,
    )
    return ChatRuntime(llm)


"""What a model family tells the rest of glm4-local, and the types it tells it in.

A family (one module each, listed in `registry.py`) holds every fact about one kind of model: how
its config.json reads, which checkpoint tensors make which GGUF tensors, its llama.cpp architecture,
tokenizer and special tokens, its chat template and the numpy forward pass `verify` compares with.
The converter, the header checks, the chat runtime and `doctor` ask the family; none spells a fact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gguf
import numpy as np

from glm4_local.core.errors import CheckpointError, GGUFFileError, Glm4LocalError
from glm4_local.core.families.replies import ReplyFormat

K = gguf.Keys
Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint's hyper-parameters in llama.cpp's terms, whichever layout its config uses."""

    layout: str  # the checkpoint layout (keys the family's tensor table)
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    vocab_size: int
    context_length: int
    rms_eps: float
    rope_base: float
    rope_dim: int
    qkv_bias: bool
    tied_embeddings: bool

    @property
    def q_rows(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.n_head_kv * self.head_dim

    def validate(self, where: str, error: type[Glm4LocalError] = CheckpointError) -> None:
        positive = {
            "layers": self.n_layer, "hidden size": self.n_embd, "attention heads": self.n_head,
            "KV heads": self.n_head_kv, "head dim": self.head_dim, "FFN size": self.n_ff,
            "vocabulary size": self.vocab_size, "context length": self.context_length,
        }
        for what, value in positive.items():
            if value <= 0:
                raise error(f"{where}: {what} must be positive, got {value}")
        if self.n_head % self.n_head_kv:
            raise error(f"{where}: {self.n_head} attention heads do not divide into {self.n_head_kv} KV groups")
        if self.rope_dim % 2 or not 0 < self.rope_dim <= self.head_dim:
            raise error(f"{where}: rotary dimension {self.rope_dim} invalid for head dim {self.head_dim}")
        if not (math.isfinite(self.rms_eps) and self.rms_eps > 0):
            raise error(f"{where}: norm epsilon {self.rms_eps} must be a positive number")
        if not (math.isfinite(self.rope_base) and self.rope_base > 0):
            raise error(f"{where}: rope base {self.rope_base} must be a positive number")


ShapeOf = Callable[[ModelSpec], Shape]


@dataclass(frozen=True)
class Part:
    """One checkpoint tensor (name pattern with {bid}) and the shape it must have."""

    pattern: str
    shape: ShapeOf


@dataclass(frozen=True)
class Target:
    """One GGUF tensor: its kind and suffix, and per layout the parts stacked row-wise to make it."""

    tensor: gguf.MODEL_TENSOR
    suffix: str
    parts: Mapping[str, tuple[Part, ...]]
    wanted: Callable[[ModelSpec], bool] = lambda spec: True  # e.g. a bias only some configs have

    def gguf_name(self, bid: int | None) -> str:
        fmt = {"bid": bid} if bid is not None else {}
        return gguf.TENSOR_NAMES[self.tensor].format(**fmt) + "." + self.suffix


@dataclass(frozen=True)
class TensorTable:
    """The GGUF tensors of a model, in file order: the ones before the layers, per layer, after."""

    head: tuple[Target, ...]
    per_layer: tuple[Target, ...]
    tail: tuple[Target, ...]
    derived: frozenset[str] = frozenset()  # checkpoint tensors every runtime recomputes (not converted)

    def targets(self, spec: ModelSpec) -> Iterator[tuple[Target, int | None]]:
        layered = [(t, bid) for bid in range(spec.n_layer) for t in self.per_layer]
        for target, bid in [*((t, None) for t in self.head), *layered, *((t, None) for t in self.tail)]:
            if target.wanted(spec):
                yield target, bid


@dataclass(frozen=True)
class Hyperparams:
    """What chatting needs from a GGUF header: trained context and the KV-cache shape."""

    context_length: int
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_head: int = 0  # query heads (what attention's scores take without flash attention)


class WeightSource(Protocol):
    """Float32 weights by GGUF tensor name, for the reference forward pass."""

    def has(self, name: str) -> bool: ...

    def tensor(self, name: str) -> np.ndarray: ...

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray: ...

    def row_blocks(self, name: str) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class ModelFamily:
    """Every fact about one family of models; see the module docstring."""

    name: str
    arch: gguf.MODEL_ARCH
    model_types: tuple[str, ...]  # config.json model_type values it converts
    refused_model_types: Mapping[str, str]  # look-alikes it must not convert, and why
    supported: str  # the checkpoints it converts, for messages
    spec_from_config: Callable[[Mapping[str, Any], str], ModelSpec]
    spec_from_gguf: Callable[[Any, str], ModelSpec]  # from a GGUF header; GGUFFileError when it cannot be one
    tensors: TensorTable
    forward: Callable[[ModelSpec, WeightSource, Sequence[int]], np.ndarray]
    # tokenizer
    checkpoint_tokenizer: str  # the reader of its checkpoints' tokenizer file (convert/vocab.py READERS)
    tokenizer_model: str  # llama.cpp's tokenizer.ggml.model
    pre_tokenizer: str  # llama.cpp's pre-tokenizer name that reproduces the family's tokenizer
    pre_tokenizer_pattern: str
    special_tokens: tuple[str, ...]  # in id order, right after the ranked tokens
    eos_token: str
    eot_token: str
    eom_token: str  # written as tokenizer.ggml.eom_token_id: llama.cpp then ends generation on it too
    stop_tokens: tuple[str, ...]  # generation ends on any of these; none is shown
    markup_tokens: tuple[str, ...]  # the special tokens the chat template writes
    call_end_token: str  # the stop token that ends a tool call (the caller's result comes next)
    replies: ReplyFormat  # how replies are read and calls and results written back
    # chat: the published templates by model name, the first the default; used when a GGUF carries
    # none, and by `render` without a model (empty: the family's templates come from its checkpoints)
    published_templates: Mapping[str, str]
    long_context: tuple[int, str] | None  # (trained context above which, template name to use)
    default_temperature: float  # when a GGUF has no general.sampling.* (the model's generation_config)
    default_top_p: float
    probe_prompts: tuple[str, ...]  # rendered prompts, special tokens included, that `verify` runs
    # the flagship model, for `doctor`'s what-fits table
    flagship: Hyperparams
    flagship_parameters: float
    flagship_bits_per_weight: Mapping[gguf.LlamaFileType, float]
    flagship_long: Hyperparams | None = None  # its long-context variant (GLM-4-9B-Chat-1M), for doctor

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    @property
    def published_template(self) -> str | None:
        """The default published template (None: the family's come only from their checkpoints)."""
        return next(iter(self.published_templates.values()), None)

    def template_for_context(self, context_length: int) -> tuple[str, str] | None:
        """(name, text) of the published template a model with this trained context was released with."""
        if not self.published_templates:
            return None
        if self.long_context and context_length > self.long_context[0]:
            name = self.long_context[1]
        else:
            name = next(iter(self.published_templates))
        return name, self.published_templates[name]

    def hyperparams(self, header: Any, where: str) -> Hyperparams:
        """What chatting needs, from a GGUF header of this architecture."""
        spec = self.spec_from_gguf(header, where)
        return Hyperparams(spec.context_length, spec.n_layer, spec.n_head_kv, spec.head_dim, spec.n_head)

    @staticmethod
    def kv_cache_bytes(h: Hyperparams, n_ctx: int, type_k: gguf.GGMLQuantizationType,
                       type_v: gguf.GGMLQuantizationType) -> int:
        """Bytes of the K and V caches for `n_ctx` tokens (one K and one V row per layer and KV head)."""
        values_per_token = h.n_layer * h.n_head_kv * h.head_dim

        def size(qtype: gguf.GGMLQuantizationType) -> float:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            return type_size / block

        return int(n_ctx * values_per_token * (size(type_k) + size(type_v)))


def whole_number(value: Any, key: str, where: str, high: int, error: type[Glm4LocalError]) -> int:
    """`value` of setting `key` if it is a whole number 1..high; `error` naming the key otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise error(f"{where}: {key} is {value!r}, not a whole number from 1 to {high:,}")
    return value


def positive_number(value: Any, key: str, where: str, error: type[Glm4LocalError]) -> float:
    """`value` of setting `key` if it is a positive, finite number; `error` naming the key otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise error(f"{where}: {key} is {value!r}, not a positive number")
    return float(value)


def gguf_int(header: Any, key: str, where: str, high: int, default: int | None = None) -> int:
    """A GGUF header's integer field, 1..high; GGUFFileError naming the key otherwise."""
    value = header.get(key, default)
    if value is None:
        raise GGUFFileError(f"{where}: {key} is missing")
    return whole_number(value, key, where, high, GGUFFileError)


def gguf_float(header: Any, key: str, where: str, default: float | None = None) -> float:
    """A GGUF header's positive, finite number field; GGUFFileError naming the key otherwise."""
    return positive_number(header.get(key, default), key, where, GGUFFileError)

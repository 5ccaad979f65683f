"""Which checkpoint tensors become which GGUF tensors, with the shapes each must have.

One table per checkpoint layout. Both layouts end in the same GGUF (fused QKV, fused gate/up),
so a model converts to identical bytes whichever layout it was published in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import gguf

from glm4_local.errors import CheckpointError
from glm4_local.spec import Layout, ModelSpec

T = gguf.MODEL_TENSOR
Shape = tuple[int, ...]
ShapeOf = Callable[[ModelSpec], Shape]

# Recomputed by every runtime from the rope settings; present in original-layout checkpoints.
DERIVED_TENSORS = frozenset({"transformer.rotary_pos_emb.inv_freq"})


@dataclass(frozen=True)
class Part:
    """One checkpoint tensor (name pattern with {bid}) and the shape it must have."""

    pattern: str
    shape: ShapeOf


@dataclass(frozen=True)
class Target:
    """One GGUF tensor: its kind and suffix, per layout the parts stacked row-wise to make it."""

    tensor: gguf.MODEL_TENSOR
    suffix: str
    per_layer: bool
    parts: Mapping[Layout, tuple[Part, ...]]


_L = "transformer.encoder.layers.{bid}."
_H = "model.layers.{bid}."


def _qkv_rows(s: ModelSpec) -> int:
    return s.q_rows + 2 * s.kv_rows


def _both(chatglm: str, glm: str, shape: ShapeOf) -> Mapping[Layout, tuple[Part, ...]]:
    return {"chatglm": (Part(chatglm, shape),), "glm": (Part(glm, shape),)}


def _split_qkv(
    chatglm: str, suffix: str, shape: Callable[[ModelSpec, int], Shape]
) -> Mapping[Layout, tuple[Part, ...]]:
    """Original layout: one fused QKV tensor. transformers layout: q, k, v stacked in that order."""
    return {
        "chatglm": (Part(chatglm, lambda s: shape(s, _qkv_rows(s))),),
        "glm": tuple(
            Part(_H + f"self_attn.{proj}_proj.{suffix}", lambda s, rows=rows: shape(s, rows(s)))
            for proj, rows in (("q", lambda s: s.q_rows), ("k", lambda s: s.kv_rows), ("v", lambda s: s.kv_rows))
        ),
    }


TOKEN_EMBD = Target(T.TOKEN_EMBD, "weight", False, _both(
    "transformer.embedding.word_embeddings.weight", "model.embed_tokens.weight",
    lambda s: (s.vocab_size, s.n_embd)))
OUTPUT_NORM = Target(T.OUTPUT_NORM, "weight", False, _both(
    "transformer.encoder.final_layernorm.weight", "model.norm.weight", lambda s: (s.n_embd,)))
OUTPUT = Target(T.OUTPUT, "weight", False, _both(
    "transformer.output_layer.weight", "lm_head.weight", lambda s: (s.vocab_size, s.n_embd)))

LAYER_TARGETS: tuple[Target, ...] = (
    Target(T.ATTN_NORM, "weight", True, _both(
        _L + "input_layernorm.weight", _H + "input_layernorm.weight", lambda s: (s.n_embd,))),
    Target(T.ATTN_QKV, "weight", True, _split_qkv(
        _L + "self_attention.query_key_value.weight", "weight",
        lambda s, rows: (rows, s.n_embd))),
    Target(T.ATTN_QKV, "bias", True, _split_qkv(
        _L + "self_attention.query_key_value.bias", "bias",
        lambda s, rows: (rows,))),
    Target(T.ATTN_OUT, "weight", True, _both(
        _L + "self_attention.dense.weight", _H + "self_attn.o_proj.weight", lambda s: (s.n_embd, s.q_rows))),
    Target(T.FFN_NORM, "weight", True, _both(
        _L + "post_attention_layernorm.weight", _H + "post_attention_layernorm.weight", lambda s: (s.n_embd,))),
    Target(T.FFN_UP, "weight", True, _both(
        _L + "mlp.dense_h_to_4h.weight", _H + "mlp.gate_up_proj.weight", lambda s: (2 * s.n_ff, s.n_embd))),
    Target(T.FFN_DOWN, "weight", True, _both(
        _L + "mlp.dense_4h_to_h.weight", _H + "mlp.down_proj.weight", lambda s: (s.n_embd, s.n_ff))),
)


@dataclass(frozen=True)
class PlannedTensor:
    """A GGUF tensor to write: name, numpy shape, and the checkpoint tensors stacked to make it."""

    name: str
    shape: Shape
    sources: tuple[str, ...]

    @property
    def is_vector(self) -> bool:
        return len(self.shape) == 1


def _targets(spec: ModelSpec) -> list[tuple[Target, int | None]]:
    out: list[tuple[Target, int | None]] = [(TOKEN_EMBD, None)]
    for bid in range(spec.n_layer):
        for target in LAYER_TARGETS:
            if target.tensor == T.ATTN_QKV and target.suffix == "bias" and not spec.qkv_bias:
                continue
            out.append((target, bid))
    out.append((OUTPUT_NORM, None))
    if not spec.tied_embeddings:
        out.append((OUTPUT, None))
    return out


def plan_tensors(spec: ModelSpec, shapes: Mapping[str, Shape], where: str) -> list[PlannedTensor]:
    """Map checkpoint tensors (name -> shape) to GGUF tensors; every mismatch is a CheckpointError."""
    plan: list[PlannedTensor] = []
    used: set[str] = set()
    for target, bid in _targets(spec):
        fmt = {"bid": bid} if bid is not None else {}
        sources = []
        for part in target.parts[spec.layout]:
            name = part.pattern.format(**fmt)
            expected = part.shape(spec)
            if name not in shapes:
                raise CheckpointError(f"{where}: tensor {name!r} is missing")
            if tuple(shapes[name]) != expected:
                raise CheckpointError(
                    f"{where}: tensor {name!r} has shape {list(shapes[name])}, expected {list(expected)}"
                )
            sources.append(name)
            used.add(name)
        rows = sum(shapes[s][0] for s in sources)
        shape = (rows, *shapes[sources[0]][1:])
        gguf_name = gguf.TENSOR_NAMES[target.tensor].format(**fmt) + "." + target.suffix
        plan.append(PlannedTensor(gguf_name, shape, tuple(sources)))
    unexpected = sorted(set(shapes) - used - DERIVED_TENSORS)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: unexpected tensor {unexpected[0]!r}{more} for this GLM-4 config")
    return plan

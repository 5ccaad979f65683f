"""The GLM-4-9B family: glm-4-9b-chat, -chat-1m, glm-4-9b, codegeex4-all-9b, and glm-4-9b-chat-hf.

Every fact about these models lives here: both config.json layouts, the checkpoint tensor names,
llama.cpp's `chatglm` architecture, GLM-4's tokenizer and special tokens, its chat template and the
numpy forward pass that `verify` compares llama.cpp with. Checkpoints come in two layouts: the
original (`model_type` "chatglm", fused QKV) and transformers' (`model_type` "glm", GlmForCausalLM);
both convert to the same GGUF tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gguf
import numpy as np

from glm4_local.core.errors import CheckpointError
from glm4_local.core.glm4_templates import GLM4_CHAT_1M_TEMPLATE, GLM4_CHAT_TEMPLATE
from glm4_local.core.model_family import (
    Hyperparams,
    ModelFamily,
    ModelSpec,
    Part,
    Shape,
    ShapeOf,
    Target,
    TensorTable,
    WeightSource,
)

T = gguf.MODEL_TENSOR
F = gguf.LlamaFileType

# -- config.json -> ModelSpec ------------------------------------------------------------------

SUPPORTED = (
    "GLM-4 in the original layout (model_type 'chatglm': glm-4-9b-chat, glm-4-9b-chat-1m, glm-4-9b, "
    "codegeex4-all-9b) or the transformers layout (model_type 'glm', GlmForCausalLM: glm-4-9b-chat-hf)"
)
REFUSED = {
    "glm4": "model_type 'glm4' (GLM-4-0414, Glm4ForCausalLM) is a different architecture",
}

# Original-layout switches that GLM-4 always has; another value means a model llama.cpp's
# `chatglm` graph would compute differently, so it is refused rather than converted wrongly.
_CHATGLM_REQUIRED_FLAGS: dict[str, bool] = {
    "rmsnorm": True,
    "add_bias_linear": False,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
    "original_rope": True,
}

_DEFAULT_ROPE_BASE = 10000.0


def spec_from_config(config: Mapping[str, Any], where: str) -> ModelSpec:
    """Both layouts to one set of numbers (the caller has matched `model_type` to this family)."""
    spec = _from_chatglm(config, where) if config.get("model_type") == "chatglm" else _from_glm(config, where)
    spec.validate(where)
    return spec


def _require(config: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise CheckpointError(f"{where}: missing key {key!r}")
    return config[key]


def _from_chatglm(config: Mapping[str, Any], where: str) -> ModelSpec:
    for flag, wanted in _CHATGLM_REQUIRED_FLAGS.items():
        if flag in config and bool(config[flag]) != wanted:
            raise CheckpointError(f"{where}: {flag}={config[flag]!r} is not a GLM-4 setting (expected {wanted})")
    n_head = int(_require(config, "num_attention_heads", where))
    n_embd = int(_require(config, "hidden_size", where))
    multi_query = bool(config.get("multi_query_attention", False))
    head_dim = int(config.get("kv_channels") or n_embd // n_head)
    rope_ratio = float(config.get("rope_ratio") or 1.0)
    n_layer = config.get("num_layers", config.get("num_hidden_layers"))
    if n_layer is None:
        raise CheckpointError(f"{where}: missing key 'num_layers'")
    return ModelSpec(
        layout="chatglm",
        n_layer=int(n_layer),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(_require(config, "multi_query_group_num", where)) if multi_query else n_head,
        head_dim=head_dim,
        n_ff=int(_require(config, "ffn_hidden_size", where)),
        vocab_size=int(config.get("padded_vocab_size") or _require(config, "vocab_size", where)),
        context_length=int(config.get("seq_length") or 8192),
        rms_eps=float(config.get("layernorm_epsilon", 1e-5)),
        rope_base=_DEFAULT_ROPE_BASE * rope_ratio,
        rope_dim=head_dim // 2,
        qkv_bias=bool(config.get("add_qkv_bias", True)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _glm_rope(config: Mapping[str, Any]) -> tuple[float, float]:
    """(rope base, partial rotary factor), from transformers 4.x or 5.x style configs."""
    params = config.get("rope_parameters") or {}
    base = params.get("rope_theta", config.get("rope_theta", _DEFAULT_ROPE_BASE))
    factor = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))
    return float(base), float(factor)


def _from_glm(config: Mapping[str, Any], where: str) -> ModelSpec:
    rope_base, partial = _glm_rope(config)
    n_head = int(_require(config, "num_attention_heads", where))
    n_embd = int(_require(config, "hidden_size", where))
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    scaling = (config.get("rope_parameters") or {}).get("rope_type", "default")
    if scaling not in ("default", None) or config.get("rope_scaling"):
        raise CheckpointError(f"{where}: rope scaling {scaling!r} is not supported for GLM-4")
    return ModelSpec(
        layout="glm",
        n_layer=int(_require(config, "num_hidden_layers", where)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(config.get("num_key_value_heads") or n_head),
        head_dim=head_dim,
        n_ff=int(_require(config, "intermediate_size", where)),
        vocab_size=int(_require(config, "vocab_size", where)),
        context_length=int(config.get("max_position_embeddings") or 8192),
        rms_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_base=rope_base,
        rope_dim=int(head_dim * partial),
        qkv_bias=bool(config.get("attention_bias", True)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


# -- checkpoint tensors -> GGUF tensors -----------------------------------------------------------

_L = "transformer.encoder.layers.{bid}."
_H = "model.layers.{bid}."


def _qkv_rows(s: ModelSpec) -> int:
    return s.q_rows + 2 * s.kv_rows


def _both(chatglm: str, glm: str, shape: ShapeOf) -> Mapping[str, tuple[Part, ...]]:
    return {"chatglm": (Part(chatglm, shape),), "glm": (Part(glm, shape),)}


def _split_qkv(chatglm: str, suffix: str, shape: Callable[[ModelSpec, int], Shape]) -> Mapping[str, tuple[Part, ...]]:
    """Original layout: one fused QKV tensor. transformers layout: q, k, v stacked in that order."""
    return {
        "chatglm": (Part(chatglm, lambda s: shape(s, _qkv_rows(s))),),
        "glm": tuple(
            Part(_H + f"self_attn.{proj}_proj.{suffix}", lambda s, rows=rows: shape(s, rows(s)))
            for proj, rows in (("q", lambda s: s.q_rows), ("k", lambda s: s.kv_rows), ("v", lambda s: s.kv_rows))
        ),
    }


TENSORS = TensorTable(
    head=(
        Target(T.TOKEN_EMBD, "weight", _both(
            "transformer.embedding.word_embeddings.weight", "model.embed_tokens.weight",
            lambda s: (s.vocab_size, s.n_embd))),
    ),
    per_layer=(
        Target(T.ATTN_NORM, "weight", _both(
            _L + "input_layernorm.weight", _H + "input_layernorm.weight", lambda s: (s.n_embd,))),
        Target(T.ATTN_QKV, "weight", _split_qkv(
            _L + "self_attention.query_key_value.weight", "weight", lambda s, rows: (rows, s.n_embd))),
        Target(T.ATTN_QKV, "bias", _split_qkv(
            _L + "self_attention.query_key_value.bias", "bias", lambda s, rows: (rows,)),
            wanted=lambda s: s.qkv_bias),
        Target(T.ATTN_OUT, "weight", _both(
            _L + "self_attention.dense.weight", _H + "self_attn.o_proj.weight", lambda s: (s.n_embd, s.q_rows))),
        Target(T.FFN_NORM, "weight", _both(
            _L + "post_attention_layernorm.weight", _H + "post_attention_layernorm.weight", lambda s: (s.n_embd,))),
        Target(T.FFN_UP, "weight", _both(
            _L + "mlp.dense_h_to_4h.weight", _H + "mlp.gate_up_proj.weight", lambda s: (2 * s.n_ff, s.n_embd))),
        Target(T.FFN_DOWN, "weight", _both(
            _L + "mlp.dense_4h_to_h.weight", _H + "mlp.down_proj.weight", lambda s: (s.n_embd, s.n_ff))),
    ),
    tail=(
        Target(T.OUTPUT_NORM, "weight", _both(
            "transformer.encoder.final_layernorm.weight", "model.norm.weight", lambda s: (s.n_embd,))),
        Target(T.OUTPUT, "weight", _both(
            "transformer.output_layer.weight", "lm_head.weight", lambda s: (s.vocab_size, s.n_embd)),
            wanted=lambda s: not s.tied_embeddings),
    ),
    # recomputed by every runtime from the rope settings; present in original-layout checkpoints
    derived=frozenset({"transformer.rotary_pos_emb.inv_freq"}),
)


# -- the forward pass, written from the architecture description (not from llama.cpp) --------------

def _rope(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the first rope_dim dims of each head."""
    n_tokens, rot = x.shape[0], spec.rope_dim
    inv_freq = spec.rope_base ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    angles = np.arange(n_tokens, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(angles)[:, None, :].astype(np.float32)
    sin = np.sin(angles)[:, None, :].astype(np.float32)
    out = x.copy()
    even, odd = x[..., 0:rot:2], x[..., 1:rot:2]
    out[..., 0:rot:2] = even * cos - odd * sin
    out[..., 1:rot:2] = even * sin + odd * cos
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _attention(s: ModelSpec, w: WeightSource, h: np.ndarray, bid: int) -> np.ndarray:
    n = h.shape[0]
    qkv = h @ w.tensor(f"blk.{bid}.attn_qkv.weight").T
    if s.qkv_bias:
        qkv = qkv + w.tensor(f"blk.{bid}.attn_qkv.bias")
    q = _rope(s, qkv[:, : s.q_rows].reshape(n, s.n_head, s.head_dim))
    k = _rope(s, qkv[:, s.q_rows : s.q_rows + s.kv_rows].reshape(n, s.n_head_kv, s.head_dim))
    v = qkv[:, s.q_rows + s.kv_rows :].reshape(n, s.n_head_kv, s.head_dim)
    group = s.n_head // s.n_head_kv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(s.head_dim))
    scores = scores + np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    context = np.einsum("hqk,khd->qhd", _softmax(scores), v).reshape(n, s.q_rows)
    return context @ w.tensor(f"blk.{bid}.attn_output.weight").T


def _mlp(s: ModelSpec, w: WeightSource, h: np.ndarray, bid: int) -> np.ndarray:
    gate_up = h @ w.tensor(f"blk.{bid}.ffn_up.weight").T
    gate, up = gate_up[:, : s.n_ff], gate_up[:, s.n_ff :]
    return (gate / (1.0 + np.exp(-gate)) * up) @ w.tensor(f"blk.{bid}.ffn_down.weight").T


def _rms_norm(s: ModelSpec, w: WeightSource, x: np.ndarray, name: str) -> np.ndarray:
    variance = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(variance + s.rms_eps)).astype(np.float32) * w.tensor(name)


def forward(spec: ModelSpec, weights: WeightSource, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) float32 logits, position i predicting token i+1; one layer at a time."""
    x = weights.rows("token_embd.weight", np.asarray(tokens))
    for bid in range(spec.n_layer):
        x = x + _attention(spec, weights, _rms_norm(spec, weights, x, f"blk.{bid}.attn_norm.weight"), bid)
        x = x + _mlp(spec, weights, _rms_norm(spec, weights, x, f"blk.{bid}.ffn_norm.weight"), bid)
    x = _rms_norm(spec, weights, x, "output_norm.weight")
    head = "output.weight" if weights.has("output.weight") else "token_embd.weight"
    return np.concatenate([x @ block.T for block in weights.row_blocks(head)], axis=1)


# -- the family -----------------------------------------------------------------------------------

# The regex GLM-4's own tokenizer (tiktoken) splits text with before BPE.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Fixed in GLM-4's tokenizer code; they follow the last rank in this order.
SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|begin_of_video|>", "<|end_of_video|>",
)

GLM4_9B = ModelFamily(
    name="GLM-4-9B",
    arch=gguf.MODEL_ARCH.CHATGLM,
    model_types=("chatglm", "glm"),
    refused_model_types=REFUSED,
    supported=SUPPORTED,
    spec_from_config=spec_from_config,
    tensors=TENSORS,
    forward=forward,
    # llama.cpp's `glm4` pre-tokenizer looks a whole pre-tokenized piece up first, as tiktoken does;
    # its older `chatglm-bpe` does not, and splits hundreds of words GLM-4 keeps whole.
    pre_tokenizer="glm4",
    pre_tokenizer_pattern=PATTERN,
    special_tokens=SPECIAL_TOKENS,
    eos_token="<|endoftext|>",
    eot_token="<|user|>",
    eom_token="<|observation|>",
    stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),
    markup_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    call_end_token="<|observation|>",
    published_templates={"glm-4-9b-chat": GLM4_CHAT_TEMPLATE, "glm-4-9b-chat-1m": GLM4_CHAT_1M_TEMPLATE},
    long_context=(131072, "glm-4-9b-chat-1m"),
    default_temperature=0.8,
    default_top_p=0.8,
    probe_prompts=(
        "[gMASK]<sop><|user|>\nWhat is the capital of France? Answer in one word.<|assistant|>",
        "[gMASK]<sop><|user|>\n请用一句话介绍长城。<|assistant|>",
        "[gMASK]<sop><|system|>\nYou translate English to Chinese.<|user|>\nGood morning, 朋友!<|assistant|>",
    ),
    flagship=Hyperparams(context_length=131072, n_layer=40, n_head_kv=2, head_dim=128),
    flagship_parameters=9.40e9,
    # bits per weight of GLM-4-9B in each type (k-quant mixes as llama.cpp's quantizer makes them)
    flagship_bits_per_weight={F.MOSTLY_Q4_K_M: 4.89, F.MOSTLY_Q5_K_M: 5.70, F.MOSTLY_Q6_K: 6.56,
                              F.MOSTLY_Q8_0: 8.50, F.MOSTLY_F16: 16.0},
)

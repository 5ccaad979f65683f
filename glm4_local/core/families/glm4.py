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

from glm4_local.core.errors import CheckpointError, GGUFFileError
from glm4_local.core.families.family import (
    Hyperparams,
    ModelFamily,
    ModelSpec,
    Part,
    Shape,
    ShapeOf,
    Target,
    TensorTable,
    WeightSource,
    gguf_float,
    gguf_int,
    positive_number,
    whole_number,
)
from glm4_local.core.families.glm4_replies import GLM4_REPLIES
from glm4_local.core.families.glm4_templates import GLM4_CHAT_1M_TEMPLATE, GLM4_CHAT_TEMPLATE

T = gguf.MODEL_TENSOR
F = gguf.LlamaFileType
K = gguf.Keys
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.CHATGLM]
LAYOUTS = ("chatglm", "glm")  # config.json model_type of the original and the transformers layout

# -- config.json -> ModelSpec ------------------------------------------------------------------

SUPPORTED = (
    "GLM-4 in the original layout (model_type 'chatglm': glm-4-9b-chat, glm-4-9b-chat-1m, glm-4-9b, "
    "codegeex4-all-9b) or the transformers layout (model_type 'glm', GlmForCausalLM: glm-4-9b-chat-hf)"
)
REFUSED: dict[str, str] = {}  # GLM-4-0414's model type has a family of its own (glm4_0414.py)

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
_MAX_CONTEXT = 1 << 24
_MAX_WIDTH = 1 << 20
_MAX_VOCAB = 1 << 22


def spec_from_config(config: Mapping[str, Any], where: str) -> ModelSpec:
    """Both layouts to one set of numbers (the caller has matched `model_type` to this family)."""
    spec = _from_chatglm(config, where) if config.get("model_type") == LAYOUTS[0] else hf_spec(config, where)
    spec.validate(where)
    return spec


_MAX_LAYERS = 4096


def _value(config: Mapping[str, Any], keys: tuple[str, ...], default: Any) -> tuple[str, Any]:
    for key in keys:
        if config.get(key) is not None:
            return key, config[key]
    return keys[0], default


def _int(config: Mapping[str, Any], *keys: str, where: str, default: int | None = None,
         high: int = _MAX_WIDTH) -> int:
    """The first of `keys` present: a whole number 1..high (default when absent, error when none)."""
    key, value = _value(config, keys, default)
    if value is None:
        raise CheckpointError(f"{where}: missing key {key!r}")
    return whole_number(value, key, where, high, CheckpointError)


def _float(config: Mapping[str, Any], *keys: str, where: str, default: float) -> float:
    """The first of `keys` present: a positive, finite number."""
    key, value = _value(config, keys, default)
    return positive_number(value, key, where, CheckpointError)


def _flag(config: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"{where}: {key} is {value!r}, not true or false")
    return value


def _from_chatglm(config: Mapping[str, Any], where: str) -> ModelSpec:
    for flag, wanted in _CHATGLM_REQUIRED_FLAGS.items():
        if flag in config and config[flag] != wanted:
            raise CheckpointError(f"{where}: {flag}={config[flag]!r} is not a GLM-4 setting (expected {wanted})")
    n_head = _int(config, "num_attention_heads", where=where)
    n_embd = _int(config, "hidden_size", where=where)
    head_dim = _int(config, "kv_channels", where=where, default=max(1, n_embd // n_head))
    multi_query = _flag(config, "multi_query_attention", where, False)
    return ModelSpec(
        layout=LAYOUTS[0],
        n_layer=_int(config, "num_layers", "num_hidden_layers", where=where, high=_MAX_LAYERS),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=_int(config, "multi_query_group_num", where=where) if multi_query else n_head,
        head_dim=head_dim,
        n_ff=_int(config, "ffn_hidden_size", where=where),
        vocab_size=_int(config, "padded_vocab_size", "vocab_size", where=where, high=_MAX_VOCAB),
        context_length=_int(config, "seq_length", where=where, default=8192, high=_MAX_CONTEXT),
        rms_eps=_float(config, "layernorm_epsilon", where=where, default=1e-5),
        rope_base=_DEFAULT_ROPE_BASE * _float(config, "rope_ratio", where=where, default=1.0),
        rope_dim=head_dim // 2,
        qkv_bias=_flag(config, "add_qkv_bias", where, True),
        tied_embeddings=_flag(config, "tie_word_embeddings", where, False),
    )


def hf_spec(config: Mapping[str, Any], where: str, layout: str = LAYOUTS[1]) -> ModelSpec:
    """transformers' GLM config (GlmForCausalLM; Glm4ForCausalLM's reads the same) as `layout`."""
    params = config.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: rope_parameters is not an object")
    scaling = params.get("rope_type", "default")
    if scaling not in ("default", None) or config.get("rope_scaling"):
        raise CheckpointError(f"{where}: rope scaling {scaling!r} is not supported for GLM-4 models")
    rope_base = _float({**config, **params}, "rope_theta", where=where, default=_DEFAULT_ROPE_BASE)
    partial = _float({**config, **params}, "partial_rotary_factor", where=where, default=0.5)
    n_head = _int(config, "num_attention_heads", where=where)
    n_embd = _int(config, "hidden_size", where=where)
    head_dim = _int(config, "head_dim", where=where, default=max(1, n_embd // n_head))
    return ModelSpec(
        layout=layout,
        n_layer=_int(config, "num_hidden_layers", where=where, high=_MAX_LAYERS),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=_int(config, "num_key_value_heads", where=where, default=n_head),
        head_dim=head_dim,
        n_ff=_int(config, "intermediate_size", where=where),
        vocab_size=_int(config, "vocab_size", where=where, high=_MAX_VOCAB),
        context_length=_int(config, "max_position_embeddings", where=where, default=8192, high=_MAX_CONTEXT),
        rms_eps=_float(config, "rms_norm_eps", where=where, default=1e-5),
        rope_base=rope_base,
        rope_dim=int(head_dim * min(partial, 1.0)),
        qkv_bias=_flag(config, "attention_bias", where, True),
        tied_embeddings=_flag(config, "tie_word_embeddings", where, False),
    )


# -- a GGUF header -> ModelSpec (what llama.cpp's `chatglm` loader reads) ---------------------------



def spec_from_gguf(header: Any, where: str) -> ModelSpec:
    """The hyper-parameters a `chatglm` GGUF declares, each checked as llama.cpp's loader would need."""
    return header_spec(header, where, ARCH, LAYOUTS[0])


def header_spec(header: Any, where: str, arch: str, layout: str) -> ModelSpec:
    """The hyper-parameters a GGUF of llama.cpp architecture `arch` declares (GLM-4's keys; GLM-4-0414's
    are the same under `glm4`), each checked as llama.cpp's loader would need."""
    def key(name: str) -> str:
        return name.format(arch=arch)

    names = {t.name for t in header.tensors}
    tokens = header.strings(K.Tokenizer.LIST)
    if not tokens:
        raise GGUFFileError(f"{where}: {K.Tokenizer.LIST} is missing or empty")
    n_embd = gguf_int(header, key(K.LLM.EMBEDDING_LENGTH), where, _MAX_WIDTH)
    n_head = gguf_int(header, key(K.Attention.HEAD_COUNT), where, n_embd)
    head_dim = gguf_int(header, key(K.Attention.KEY_LENGTH), where, _MAX_WIDTH, default=n_embd // n_head)
    if gguf_int(header, key(K.Attention.VALUE_LENGTH), where, _MAX_WIDTH, default=head_dim) != head_dim:
        raise GGUFFileError(f"{where}: key and value head sizes differ; GLM-4 has one head size")
    spec = ModelSpec(
        layout=layout,
        n_layer=gguf_int(header, key(K.LLM.BLOCK_COUNT), where, max(1, len(names))),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=gguf_int(header, key(K.Attention.HEAD_COUNT_KV), where, n_head, default=n_head),
        head_dim=head_dim,
        n_ff=gguf_int(header, key(K.LLM.FEED_FORWARD_LENGTH), where, _MAX_WIDTH),
        vocab_size=len(tokens),
        context_length=gguf_int(header, key(K.LLM.CONTEXT_LENGTH), where, _MAX_CONTEXT),
        rms_eps=gguf_float(header, key(K.Attention.LAYERNORM_RMS_EPS), where),
        rope_base=gguf_float(header, key(K.Rope.FREQ_BASE), where, default=_DEFAULT_ROPE_BASE),
        rope_dim=gguf_int(header, key(K.Rope.DIMENSION_COUNT), where, _MAX_WIDTH, default=head_dim // 2),
        qkv_bias=bool({"blk.0.attn_qkv.bias", "blk.0.attn_q.bias"} & names),  # fused, or q, k and v apart
        tied_embeddings="output.weight" not in names,
    )
    spec.validate(where, GGUFFileError)
    return spec


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

def rope(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
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


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def attention(s: ModelSpec, w: WeightSource, h: np.ndarray, bid: int) -> np.ndarray:
    n = h.shape[0]
    # one fused projection (as glm4-local writes), or q, k and v apart (as llama.cpp's converter writes GLM-4-0414)
    names = ("attn_qkv",) if w.has(f"blk.{bid}.attn_qkv.weight") else ("attn_q", "attn_k", "attn_v")
    projected = [h @ w.tensor(f"blk.{bid}.{name}.weight").T for name in names]
    if s.qkv_bias:
        projected = [p + w.tensor(f"blk.{bid}.{name}.bias") for p, name in zip(projected, names, strict=True)]
    qkv = np.concatenate(projected, axis=1)
    q = rope(s, qkv[:, : s.q_rows].reshape(n, s.n_head, s.head_dim))
    k = rope(s, qkv[:, s.q_rows : s.q_rows + s.kv_rows].reshape(n, s.n_head_kv, s.head_dim))
    v = qkv[:, s.q_rows + s.kv_rows :].reshape(n, s.n_head_kv, s.head_dim)
    group = s.n_head // s.n_head_kv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(s.head_dim))
    scores = scores + np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    context = np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(n, s.q_rows)
    return context @ w.tensor(f"blk.{bid}.attn_output.weight").T


def mlp(s: ModelSpec, w: WeightSource, h: np.ndarray, bid: int) -> np.ndarray:
    gate_up = h @ w.tensor(f"blk.{bid}.ffn_up.weight").T
    gate, up = gate_up[:, : s.n_ff], gate_up[:, s.n_ff :]
    return (gate / (1.0 + np.exp(-gate)) * up) @ w.tensor(f"blk.{bid}.ffn_down.weight").T


def rms_norm(s: ModelSpec, w: WeightSource, x: np.ndarray, name: str) -> np.ndarray:
    variance = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(variance + s.rms_eps)).astype(np.float32) * w.tensor(name)


def forward(spec: ModelSpec, weights: WeightSource, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) float32 logits, position i predicting token i+1; one layer at a time."""
    x = weights.rows("token_embd.weight", np.asarray(tokens))
    for bid in range(spec.n_layer):
        x = x + attention(spec, weights, rms_norm(spec, weights, x, f"blk.{bid}.attn_norm.weight"), bid)
        x = x + mlp(spec, weights, rms_norm(spec, weights, x, f"blk.{bid}.ffn_norm.weight"), bid)
    x = rms_norm(spec, weights, x, "output_norm.weight")
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
    model_types=LAYOUTS,
    refused_model_types=REFUSED,
    supported=SUPPORTED,
    spec_from_config=spec_from_config,
    spec_from_gguf=spec_from_gguf,
    tensors=TENSORS,
    forward=forward,
    # llama.cpp's `glm4` pre-tokenizer looks a whole pre-tokenized piece up first, as tiktoken does;
    # its older `chatglm-bpe` does not, and splits hundreds of words GLM-4 keeps whole.
    checkpoint_tokenizer="tiktoken",  # tokenizer.model
    tokenizer_model="gpt2",  # llama.cpp's name for byte-level BPE
    pre_tokenizer="glm4",
    pre_tokenizer_pattern=PATTERN,
    special_tokens=SPECIAL_TOKENS,
    eos_token="<|endoftext|>",
    eot_token="<|user|>",
    eom_token="<|observation|>",
    stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),
    markup_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    call_end_token="<|observation|>",
    replies=GLM4_REPLIES,
    published_templates={"glm-4-9b-chat": GLM4_CHAT_TEMPLATE, "glm-4-9b-chat-1m": GLM4_CHAT_1M_TEMPLATE},
    long_context=(131072, "glm-4-9b-chat-1m"),
    default_temperature=0.8,
    default_top_p=0.8,
    probe_prompts=(
        "[gMASK]<sop><|user|>\nWhat is the capital of France? Answer in one word.<|assistant|>",
        "[gMASK]<sop><|user|>\n请用一句话介绍长城。<|assistant|>",
        "[gMASK]<sop><|system|>\nYou translate English to Chinese.<|user|>\nGood morning, 朋友!<|assistant|>",
    ),
    flagship=Hyperparams(context_length=131072, n_layer=40, n_head_kv=2, head_dim=128, n_head=32),
    # glm-4-9b-chat-1m: the same weights' shape with 4 KV groups and a million tokens of context
    flagship_long=Hyperparams(context_length=1048576, n_layer=40, n_head_kv=4, head_dim=128, n_head=32),
    flagship_parameters=9.40e9,
    # bits per weight of GLM-4-9B in each type (k-quant mixes as llama.cpp's quantizer makes them)
    flagship_bits_per_weight={F.MOSTLY_Q4_K_M: 4.89, F.MOSTLY_Q5_K_M: 5.70, F.MOSTLY_Q6_K: 6.56,
                              F.MOSTLY_Q8_0: 8.50, F.MOSTLY_F16: 16.0},
)

"""The GLM-4-0414 family: GLM-4-9B-0414, GLM-Z1-9B-0414 (reasoning) and their 32B siblings.

transformers' `Glm4ForCausalLM` (its `model_type` is llama.cpp's architecture name, `glm4`): GLM-4-9B-Chat-hf's
layers plus two RMSNorms each, one after attention and one after the MLP, both before their residual
add; grouped-query attention with q/k/v biases, interleaved rotary embeddings on half of each head, a
fused gate/up projection. The tokenizer is a Hugging Face `tokenizer.json` (byte-level BPE, GLM-4's
ranks and special-token ids), the chat template is the checkpoint's own (never one typed here), and
GLM-Z1 reasons in `<think>...</think>` before it answers (glm4_0414_replies.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gguf
import numpy as np

from glm4_local.core.families import glm4
from glm4_local.core.families.family import (
    ModelFamily,
    ModelSpec,
    Part,
    Target,
    TensorTable,
    WeightSource,
)
from glm4_local.core.families.glm4_0414_replies import GLM4_0414_REPLIES

T = gguf.MODEL_TENSOR
F = gguf.LlamaFileType
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GLM4]
LAYOUT = ARCH  # config.json's model_type: the same name
SUPPORTED = ("GLM-4-0414 (model_type 'glm4', Glm4ForCausalLM: GLM-4-9B-0414, GLM-Z1-9B-0414, GLM-4-32B-0414, "
             "GLM-Z1-32B-0414)")


def spec_from_config(config: Mapping[str, Any], where: str) -> ModelSpec:
    spec = glm4.hf_spec(config, where, LAYOUT)
    spec.validate(where)
    return spec


def spec_from_gguf(header: Any, where: str) -> ModelSpec:
    return glm4.header_spec(header, where, ARCH, LAYOUT)


# -- checkpoint tensors -> GGUF tensors -----------------------------------------------------------

_H = "model.layers.{bid}."


def _one(name: str, shape: Any) -> Mapping[str, tuple[Part, ...]]:
    return {LAYOUT: (Part(name, shape),)}


def _qkv(suffix: str, shape: Any) -> Mapping[str, tuple[Part, ...]]:
    """q, k and v stacked in that order into one fused tensor (llama.cpp's glm4 graph takes either)."""
    rows = (("q", lambda s: s.q_rows), ("k", lambda s: s.kv_rows), ("v", lambda s: s.kv_rows))
    return {LAYOUT: tuple(Part(_H + f"self_attn.{proj}_proj.{suffix}", lambda s, r=r: shape(s, r(s)))
                          for proj, r in rows)}


TENSORS = TensorTable(
    head=(Target(T.TOKEN_EMBD, "weight", _one("model.embed_tokens.weight", lambda s: (s.vocab_size, s.n_embd))),),
    per_layer=(
        Target(T.ATTN_NORM, "weight", _one(_H + "input_layernorm.weight", lambda s: (s.n_embd,))),
        Target(T.ATTN_QKV, "weight", _qkv("weight", lambda s, rows: (rows, s.n_embd))),
        Target(T.ATTN_QKV, "bias", _qkv("bias", lambda s, rows: (rows,)), wanted=lambda s: s.qkv_bias),
        Target(T.ATTN_OUT, "weight", _one(_H + "self_attn.o_proj.weight", lambda s: (s.n_embd, s.q_rows))),
        Target(T.ATTN_POST_NORM, "weight", _one(_H + "post_self_attn_layernorm.weight", lambda s: (s.n_embd,))),
        # transformers' "post_attention_layernorm" is the norm before the MLP: llama.cpp's ffn_norm
        Target(T.FFN_NORM, "weight", _one(_H + "post_attention_layernorm.weight", lambda s: (s.n_embd,))),
        Target(T.FFN_UP, "weight", _one(_H + "mlp.gate_up_proj.weight", lambda s: (2 * s.n_ff, s.n_embd))),
        Target(T.FFN_DOWN, "weight", _one(_H + "mlp.down_proj.weight", lambda s: (s.n_embd, s.n_ff))),
        Target(T.FFN_POST_NORM, "weight", _one(_H + "post_mlp_layernorm.weight", lambda s: (s.n_embd,))),
    ),
    tail=(
        Target(T.OUTPUT_NORM, "weight", _one("model.norm.weight", lambda s: (s.n_embd,))),
        Target(T.OUTPUT, "weight", _one("lm_head.weight", lambda s: (s.vocab_size, s.n_embd)),
               wanted=lambda s: not s.tied_embeddings),
    ),
)


# -- the forward pass, written from transformers' Glm4DecoderLayer (not from llama.cpp) ------------

def forward(spec: ModelSpec, weights: WeightSource, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) float32 logits: GLM-4's attention and MLP, each normed again before its
    residual add."""
    x = weights.rows("token_embd.weight", np.asarray(tokens))
    for bid in range(spec.n_layer):
        attended = glm4.attention(spec, weights, glm4.rms_norm(spec, weights, x, f"blk.{bid}.attn_norm.weight"), bid)
        x = x + glm4.rms_norm(spec, weights, attended, f"blk.{bid}.post_attention_norm.weight")
        fed = glm4.mlp(spec, weights, glm4.rms_norm(spec, weights, x, f"blk.{bid}.ffn_norm.weight"), bid)
        x = x + glm4.rms_norm(spec, weights, fed, f"blk.{bid}.post_ffw_norm.weight")
    x = glm4.rms_norm(spec, weights, x, "output_norm.weight")
    head = "output.weight" if weights.has("output.weight") else "token_embd.weight"
    return np.concatenate([x @ block.T for block in weights.row_blocks(head)], axis=1)


GLM4_0414 = ModelFamily(
    name="GLM-4-0414",
    arch=gguf.MODEL_ARCH.GLM4,
    model_types=(LAYOUT,),
    refused_model_types={},
    supported=SUPPORTED,
    spec_from_config=spec_from_config,
    spec_from_gguf=spec_from_gguf,
    tensors=TENSORS,
    forward=forward,
    checkpoint_tokenizer="tokenizer.json",
    # GLM-4's own ranks, split by GLM-4's regex, looked up whole first (as tiktoken did, and as the
    # conversion of those ranks to tokenizer.json keeps): llama.cpp's `glm4` pre-tokenizer
    tokenizer_model="gpt2",
    pre_tokenizer=glm4.GLM4_9B.pre_tokenizer,
    pre_tokenizer_pattern=glm4.PATTERN,
    # GLM-4-9B-Chat's special tokens at the same ids, the same end-of-generation set and template markup
    special_tokens=glm4.SPECIAL_TOKENS,  # a checkpoint's tokenizer.json lists its own
    eos_token=glm4.GLM4_9B.eos_token,
    eot_token=glm4.GLM4_9B.eot_token,
    eom_token=glm4.GLM4_9B.eom_token,
    stop_tokens=glm4.GLM4_9B.stop_tokens,  # generation_config's eos_token_id
    markup_tokens=glm4.GLM4_9B.markup_tokens,
    call_end_token=glm4.GLM4_9B.call_end_token,
    replies=GLM4_0414_REPLIES,
    # no template is published here: the checkpoint's own goes into the GGUF (`repair --template` adds one)
    published_templates={},
    long_context=None,
    default_temperature=0.6,  # THUDM's model cards for the 0414 models (a GGUF's general.sampling.* comes first)
    default_top_p=0.95,
    probe_prompts=(
        "[gMASK]<sop><|user|>\nWhat is the capital of France? Answer in one word.<|assistant|>",
        "[gMASK]<sop><|user|>\n请用一句话介绍长城。<|assistant|>\n",
        "[gMASK]<sop><|system|>\nYou translate English to Chinese.<|user|>\nGood morning, 朋友!<|assistant|>\n<think>",
    ),
    # GLM-4-9B-0414: GLM-4-9B-Chat's shapes and context with two norms more per layer (a few MB)
    flagship=glm4.GLM4_9B.flagship,
    flagship_parameters=glm4.GLM4_9B.flagship_parameters,
    flagship_bits_per_weight=glm4.GLM4_9B.flagship_bits_per_weight,
)

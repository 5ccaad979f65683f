"""A tiny random BERT embedding model as a GGUF (what `serve --embedding-model` loads), and a numpy forward
pass of the same weights (the reference its embeddings are checked against): WordPiece vocabulary, learned
positions, post-norm layers, GELU, mean pooling, L2-normalised."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["hello", "world", "cat", "dog", "sat", "on", "the", "mat", "a", "fast", "red", "car", "你", "好"]
PIECES = ["##s", "##ing", "##ed"]
N_EMBD, N_HEAD, N_FF, N_LAYER, N_CTX, EPS = 32, 2, 64, 2, 64, 1e-12


def vocabulary() -> list[str]:
    """As llama.cpp's WordPiece reads it: a word's first piece marked with U+2581, continuations bare."""
    return SPECIALS + ["\u2581" + w for w in WORDS] + [p.removeprefix("##") for p in PIECES] + ["\u2581."]


def weights(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_vocab = len(vocabulary())

    def m(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"token_embd.weight": m(n_vocab, N_EMBD), "token_types.weight": m(2, N_EMBD),
         "position_embd.weight": m(N_CTX, N_EMBD), "token_embd_norm.weight": 1 + m(N_EMBD),
         "token_embd_norm.bias": m(N_EMBD)}
    for i in range(N_LAYER):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w[f"blk.{i}.{name}.weight"], w[f"blk.{i}.{name}.bias"] = m(N_EMBD, N_EMBD), m(N_EMBD)
        w[f"blk.{i}.ffn_up.weight"], w[f"blk.{i}.ffn_up.bias"] = m(N_FF, N_EMBD), m(N_FF)
        w[f"blk.{i}.ffn_down.weight"], w[f"blk.{i}.ffn_down.bias"] = m(N_EMBD, N_FF), m(N_EMBD)
        for norm in ("attn_output_norm", "layer_output_norm"):
            w[f"blk.{i}.{norm}.weight"], w[f"blk.{i}.{norm}.bias"] = 1 + m(N_EMBD), m(N_EMBD)
    return w


def write_bert_gguf(path: Path, seed: int = 3) -> Path:
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-bert")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(N_LAYER)
    writer.add_head_count(N_HEAD)
    writer.add_layer_norm_eps(EPS)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_token_type_count(2)
    tokens = vocabulary()
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    for add, name in ((writer.add_pad_token_id, "[PAD]"), (writer.add_unk_token_id, "[UNK]"),
                      (writer.add_bos_token_id, "[CLS]"), (writer.add_sep_token_id, "[SEP]"),
                      (writer.add_mask_token_id, "[MASK]")):
        add(tokens.index(name))
    for name, tensor in weights(seed).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:  # ggml's tanh approximation
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def reference_embedding(tokens: list[int], seed: int = 3) -> np.ndarray:
    """The normalised mean-pooled embedding of `tokens` ([CLS] ... [SEP] included), in float64."""
    w = {k: v.astype(np.float64) for k, v in weights(seed).items()}
    n = len(tokens)
    x = w["token_embd.weight"][tokens] + w["token_types.weight"][0] + w["position_embd.weight"][:n]
    x = _norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"])
    head = N_EMBD // N_HEAD
    for i in range(N_LAYER):
        def lin(name: str, v: np.ndarray, i: int = i) -> np.ndarray:
            return v @ w[f"blk.{i}.{name}.weight"].T + w[f"blk.{i}.{name}.bias"]

        q, k, v = (lin(name, x).reshape(n, N_HEAD, head).transpose(1, 0, 2) for name in ("attn_q", "attn_k", "attn_v"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ v
        x = _norm(lin("attn_output", attended.transpose(1, 0, 2).reshape(n, N_EMBD)) + x,
                  w[f"blk.{i}.attn_output_norm.weight"], w[f"blk.{i}.attn_output_norm.bias"])
        x = _norm(lin("ffn_down", _gelu(lin("ffn_up", x))) + x,
                  w[f"blk.{i}.layer_output_norm.weight"], w[f"blk.{i}.layer_output_norm.bias"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)

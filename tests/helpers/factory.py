"""Build tiny random GLM-4 checkpoints, in either layout, the way a Hub repo would hold them.

Weights come from one seeded generator in transformers' (GlmForCausalLM) naming; the original
(`chatglm`) layout is derived by fusing q/k/v, so both layouts hold the very same numbers and the
transformers model is an oracle for either.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import regex

from glm4_local.core.families.glm4 import GLM4_9B, PATTERN
from glm4_local.core.families.glm4 import SPECIAL_TOKENS as DEFAULT_SPECIAL_TOKENS
from helpers import glm4_0414

ROOT = Path(__file__).resolve().parents[2]
# GLM4_LOCAL_TESTS_NO_SHARED=1 runs the suite as a fresh clone without ../shared would
REFERENCE = (ROOT / "no-shared" if os.environ.get("GLM4_LOCAL_TESTS_NO_SHARED")
             else ROOT.parent / "shared" / "glm4-reference") / "glm-4-9b-chat"
SHIPPED_VOCAB = Path(__file__).parents[1] / "data" / "glm4-9b-chat-vocab.gguf"
# of GLM-4-9B-Chat's published tokenizer.model (2,623,634 bytes)
TOKENIZER_SHA256 = "5a493598071550244b2ee7f26118f3edec2150b9dfa967929a99052ac83fe716"


def real_tokenizer() -> Path:
    """GLM-4-9B-Chat's tokenizer.model: from ../shared when present, else rebuilt from the shipped
    vocabulary GGUF (tests/data/README.md) into this user's temporary folder."""
    shared = REFERENCE / "tokenizer.model"
    if shared.is_file():
        return shared
    target = Path(tempfile.gettempdir()) / f"glm4-local-tests-{os.getuid()}" / "tokenizer.model"
    if not target.is_file():
        from glm4_local.core.gguf.header import read_gguf_header
        from glm4_local.gguf_tools.tokenizer_check import ranks_of

        ranks = ranks_of(read_gguf_header(SHIPPED_VOCAB))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        write_tokenizer_model(partial, sorted(ranks, key=ranks.__getitem__))
        os.replace(partial, target)
    return target


CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world! def main(): return 42\n"
    "你好，世界。今天天气很好，我们去公园散步吧。人工智能正在改变世界。\n"
    "こんにちは世界。東京は大きな都市です。안녕하세요 세계. Привет, мир! Bonjour le monde. "
    "Xin chào thế giới. नमस्ते दुनिया। مرحبا بالعالم. 1234567890 3.14159 ... !!! ??? \n\t  spaces   "
) * 3


@dataclass(frozen=True)
class Shape:
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    rope_ratio: float | None = None  # None: absent from config (GLM-4 base)
    context: int = 4096


def train_bpe(text: str, n_merges: int) -> list[bytes]:
    """A small tiktoken-style vocabulary: the 256 bytes, then `n_merges` learned merges in rank order."""
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in regex.findall(PATTERN, text))
    vocab = [bytes([b]) for b in range(256)]
    known = set(vocab)
    for _ in range(n_merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for a, b in itertools.pairwise(word):
                pairs[a, b] += count
        candidates = [(c, p) for p, c in pairs.items() if p[0] + p[1] not in known]
        if not candidates:
            break
        _, (a, b) = max(candidates)
        vocab.append(a + b)
        known.add(a + b)
        words = Counter({_merge(w, a, b): c for w, c in words.items()})
    return vocab


def _merge(word: tuple[bytes, ...], a: bytes, b: bytes) -> tuple[bytes, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tokenizer_model(path: Path, tokens: list[bytes]) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))


REAL_TOKENIZER = real_tokenizer()


def tokenizer_config(first_special: int) -> dict:
    real = REFERENCE / "tokenizer_config.json"
    config = json.loads(real.read_text()) if real.is_file() else {"chat_template": GLM4_9B.published_template}
    config["added_tokens_decoder"] = {
        str(first_special + i): {"content": t, "special": True} for i, t in enumerate(DEFAULT_SPECIAL_TOKENS)
    }
    return config


def random_weights(shape: Shape, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """float32 weights in transformers' GLM naming, scaled so logits are well spread."""
    rng = np.random.default_rng(seed)
    s = shape

    def mat(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def near_one(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, s.n_embd)).astype(np.float32)}
    for i in range(s.n_layer):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = near_one(s.n_embd)
        for proj, rows in (("q", s.n_head * s.head_dim), ("k", s.n_head_kv * s.head_dim),
                           ("v", s.n_head_kv * s.head_dim)):
            w[p + f"self_attn.{proj}_proj.weight"] = mat(rows, s.n_embd, 0.5)
            w[p + f"self_attn.{proj}_proj.bias"] = (0.1 * rng.standard_normal(rows)).astype(np.float32)
        w[p + "self_attn.o_proj.weight"] = mat(s.n_embd, s.n_head * s.head_dim)
        w[p + "post_attention_layernorm.weight"] = near_one(s.n_embd)
        w[p + "mlp.gate_up_proj.weight"] = mat(2 * s.n_ff, s.n_embd, 0.5)
        w[p + "mlp.down_proj.weight"] = mat(s.n_embd, s.n_ff)
    w["model.norm.weight"] = near_one(s.n_embd)
    # Peaked next-token distributions, like a trained model's, so top-1 is decided beyond float noise.
    w["lm_head.weight"] = mat(vocab, s.n_embd, 8.0)
    return w


def to_chatglm_names(weights: dict[str, np.ndarray], n_layer: int) -> dict[str, np.ndarray]:
    """The same weights under the original GLM-4 names (fused QKV), plus the derived inv_freq."""
    out = {
        "transformer.embedding.word_embeddings.weight": weights["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": weights["model.norm.weight"],
        "transformer.output_layer.weight": weights["lm_head.weight"],
    }
    for i in range(n_layer):
        h, o = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[o + f"self_attention.query_key_value.{kind}"] = np.concatenate(
                [weights[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], axis=0)
        out[o + "input_layernorm.weight"] = weights[h + "input_layernorm.weight"]
        out[o + "self_attention.dense.weight"] = weights[h + "self_attn.o_proj.weight"]
        out[o + "post_attention_layernorm.weight"] = weights[h + "post_attention_layernorm.weight"]
        out[o + "mlp.dense_h_to_4h.weight"] = weights[h + "mlp.gate_up_proj.weight"]
        out[o + "mlp.dense_4h_to_h.weight"] = weights[h + "mlp.down_proj.weight"]
    out["transformer.rotary_pos_emb.inv_freq"] = np.ones(16, dtype=np.float32)
    return out


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def encode(x: np.ndarray, dtype: str) -> tuple[str, bytes]:
    if dtype == "bf16":
        return "BF16", to_bf16_bits(x).tobytes()
    if dtype == "f16":
        return "F16", x.astype("<f2").tobytes()
    return "F32", x.astype("<f4").tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        # the derived inv_freq is float32 in real checkpoints whatever the weights' dtype
        st_dtype, blob = encode(array, "f32" if name.endswith("inv_freq") else dtype)
        header[name] = {"dtype": st_dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with path.open("wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for blob in blobs:
            f.write(blob)


def write_weights(folder: Path, tensors: dict[str, np.ndarray], dtype: str, shards: int) -> None:
    if shards <= 1:
        write_safetensors(folder / "model.safetensors", tensors, dtype)
        return
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / file, {n: tensors[n] for n in part}, dtype)
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def chatglm_config(shape: Shape, vocab: int, first_special: int) -> dict:
    config = json.loads((REFERENCE / "config.json").read_text()) if (REFERENCE / "config.json").is_file() else {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "add_bias_linear": False,
        "add_qkv_bias": True, "multi_query_attention": True, "rmsnorm": True, "post_layer_norm": True,
        "original_rope": True, "layernorm_epsilon": 1.5625e-07, "eos_token_id": [0], "pad_token_id": 0,
    }
    config.update(
        num_layers=shape.n_layer, num_hidden_layers=shape.n_layer, hidden_size=shape.n_embd,
        num_attention_heads=shape.n_head, multi_query_group_num=shape.n_head_kv, kv_channels=shape.head_dim,
        ffn_hidden_size=shape.n_ff, padded_vocab_size=vocab, seq_length=shape.context,
    )
    config.pop("rope_ratio", None)
    if shape.rope_ratio is not None:
        config["rope_ratio"] = shape.rope_ratio
    config["pad_token_id"] = first_special
    config["eos_token_id"] = [first_special, first_special + 7, first_special + 9]
    return config


def glm_config(shape: Shape, vocab: int, first_special: int) -> dict:
    return {
        "architectures": ["GlmForCausalLM"], "model_type": "glm", "vocab_size": vocab,
        "hidden_size": shape.n_embd, "intermediate_size": shape.n_ff, "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head, "num_key_value_heads": shape.n_head_kv, "head_dim": shape.head_dim,
        "hidden_act": "silu", "max_position_embeddings": shape.context, "rms_norm_eps": 1.5625e-07,
        "attention_bias": True, "tie_word_embeddings": False,
        "rope_parameters": {"rope_theta": 10000.0 * (shape.rope_ratio or 1.0), "partial_rotary_factor": 0.5,
                            "rope_type": "default"},
        "pad_token_id": first_special, "eos_token_id": [first_special, first_special + 7, first_special + 9],
    }


@dataclass(frozen=True)
class Spec:
    """Everything that defines one test checkpoint."""

    layout: str = "chatglm"
    dtype: str = "bf16"
    shards: int = 1
    shape: Shape = Shape()
    real_tokenizer: bool = False
    n_merges: int = 300
    seed: int = 0
    extra_tokens: tuple[str, ...] = ()  # whole words added after the trained merges (single tokens)
    script: tuple[tuple[str, str], ...] | None = None  # (token, next token): a scripted model, see below
    after_observation: str | None = None  # what follows <|assistant|> once an observation is in context
    template: str = "glm-4-0414"  # layout "glm4" (GLM-4-0414): which chat template (helpers/glm4_0414.py)

    def with_(self, **changes: object) -> Spec:
        return replace(self, **changes)


def vocabulary(spec: Spec) -> tuple[list[bytes] | None, int, int]:
    """(synthetic tokens or None for the real file, number of ranks, padded vocabulary size)."""
    if spec.real_tokenizer:
        n_ranks = sum(1 for line in REAL_TOKENIZER.read_bytes().splitlines() if line)
        return None, n_ranks, 151552
    tokens = train_bpe(CORPUS, spec.n_merges)
    tokens += [w.encode() for w in spec.extra_tokens if w.encode() not in set(tokens)]
    n = len(tokens)
    return tokens, n, (n + len(DEFAULT_SPECIAL_TOKENS) + 63) // 64 * 64


def real_tokens() -> list[bytes]:
    """GLM-4's own tokens in rank order (a scripted model on the real vocabulary names its tokens by them)."""
    lines = [line.split() for line in REAL_TOKENIZER.read_bytes().splitlines() if line]
    return [base64.b64decode(token) for token, _ in sorted(lines, key=lambda pair: int(pair[1]))]


def build_checkpoint(folder: Path, spec: Spec) -> Path:
    """Write a complete checkpoint folder for `spec` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens, n_ranks, vocab = vocabulary(spec)
    if spec.layout == "glm4":
        specials = {n_ranks + i: text for i, text in enumerate(DEFAULT_SPECIAL_TOKENS)}
        glm4_0414.write_files(folder, tokens or real_tokens(), specials, spec.template)
    elif tokens is None:
        shutil.copyfile(REAL_TOKENIZER, folder / "tokenizer.model")
    else:
        write_tokenizer_model(folder / "tokenizer.model", tokens)
    if spec.layout != "glm4":
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(n_ranks), ensure_ascii=False))
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.8, "top_p": 0.8}))
    if spec.script is None:
        weights = random_weights(spec.shape, vocab, spec.seed)
    else:
        ids = {t.decode("utf-8", "replace"): i for i, t in enumerate(tokens or real_tokens())}
        ids |= {text: n_ranks + i for i, text in enumerate(DEFAULT_SPECIAL_TOKENS)}
        weights = scripted_weights(spec, vocab, ids)
    if spec.layout == "glm":
        config = glm_config(spec.shape, vocab, n_ranks)
    elif spec.layout == "glm4":
        config = glm_config(spec.shape, vocab, n_ranks) | glm4_0414.CONFIG_CHANGES
        weights = with_post_norms(spec, weights)
    else:
        config = chatglm_config(spec.shape, vocab, n_ranks)
        weights = to_chatglm_names(weights, spec.shape.n_layer)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_weights(folder, weights, spec.dtype, spec.shards)
    return folder


def with_post_norms(spec: Spec, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GLM-4-0414's two extra norms per layer; 1 in a scripted model (whose layers pass values through)."""
    normed = glm4_0414.with_post_norms(weights, spec.shape.n_layer, spec.shape.n_embd, spec.seed)
    if spec.script is not None:
        normed = {k: (np.ones_like(v) if k.endswith(("post_self_attn_layernorm.weight", "post_mlp_layernorm.weight"))
                      else v) for k, v in normed.items()}
    return normed


def stored_weights(spec: Spec) -> dict[str, np.ndarray]:
    """The float32 values a checkpoint of `spec` holds after rounding to its dtype (HF names)."""
    _, _, vocab = vocabulary(spec)
    weights = random_weights(spec.shape, vocab, spec.seed)
    if spec.layout == "glm4":
        weights = with_post_norms(spec, weights)
    if spec.dtype == "bf16":
        return {k: (to_bf16_bits(v).astype(np.uint32) << 16).view(np.float32) for k, v in weights.items()}
    if spec.dtype == "f16":
        return {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    return weights


def scripted_weights(spec: Spec, vocab: int, ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Weights whose next token is fixed by the current token (`spec.script`), whatever the sampler.

    Every layer is zero except layer 0: its attention averages a flag that <|observation|> raises,
    and its MLP turns "current token is <|assistant|> and the flag is up" into one more dimension,
    so a model can call a tool first and answer once the tool's result is in its context.
    """
    s = spec.shape
    weights = {k: np.zeros_like(v) for k, v in random_weights(s, vocab, 0).items()}
    for k in weights:
        if k.endswith("layernorm.weight") or k == "model.norm.weight":
            weights[k][:] = 1.0
    script = dict(spec.script or ())
    states = sorted({*script, *script.values()} - {""}, key=lambda t: ids[t])
    dim = {t: i + 1 for i, t in enumerate(states)}  # dim 0: every unscripted token
    flag, gated = s.n_embd - 2, s.n_embd - 1
    assert len(states) + 1 < flag, "too many scripted tokens for n_embd"
    embed = weights["model.embed_tokens.weight"]
    embed[:, 0] = 10.0
    for token, d in dim.items():
        embed[ids[token]] = 0.0
        embed[ids[token], d] = 10.0
    head = weights["lm_head.weight"]
    for token, following in script.items():
        head[ids[following], dim[token]] = 5.0
    if spec.after_observation:
        p = "model.layers.0."
        weights[p + "self_attn.v_proj.weight"][0, dim["<|observation|>"]] = 1000.0 / 16
        weights[p + "self_attn.o_proj.weight"][flag, 0] = 1.0
        weights[p + "mlp.gate_up_proj.weight"][0, dim["<|assistant|>"]] = 1.0  # gate: current is <|assistant|>
        weights[p + "mlp.gate_up_proj.weight"][s.n_ff, flag] = 1.0  # up: the observation flag
        weights[p + "mlp.down_proj.weight"][gated, 0] = 10.0
        head[ids[spec.after_observation], gated] = 5.0
    return weights


def write_foreign_gguf(path: Path, arch: str = "llama") -> Path:
    """A small valid GGUF of another architecture."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_pre_tokenizer(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make conversions in this test write another pre-tokenizer name (as other converters do)."""
    original = gguf.GGUFWriter.add_tokenizer_pre
    monkeypatch.setattr(gguf.GGUFWriter, "add_tokenizer_pre", lambda writer, _: original(writer, name))


def tiktoken_split(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """tiktoken's merge of `token`'s bytes, stopped before the token's own rank (as llama.cpp's converter does)."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None or best[1] >= ranks[token]:
            return parts
        i = best[0]
        parts = [*parts[:i], parts[i] + parts[i + 1], *parts[i + 2 :]]


def write_community_gguf(ours: Path, dest: Path) -> Path:
    """A GLM-4 GGUF as llama.cpp's own converter writes it (the files on the Hub): pre-tokenizer
    `chatglm-bpe`, one merge per token (its tiktoken split, 2+ parts), no end-of-message id, no
    sampling defaults, no chat template, no BOS flag. Tensors unchanged."""
    from glm4_local.core.gguf.bpe import token_text
    from glm4_local.core.gguf.checks import open_gguf
    from glm4_local.gguf_tools.rewrite import Field, fields_of, rewrite_gguf
    from glm4_local.gguf_tools.tokenizer_check import ranks_of

    header = open_gguf(ours)
    ranks = ranks_of(header)
    merges = [" ".join(token_text(p) for p in tiktoken_split(ranks, t)) for t in sorted(ranks, key=ranks.get)
              if len(t) > 1]
    K, V = gguf.Keys, gguf.GGUFValueType
    fields = fields_of(header)
    for key in (K.Tokenizer.EOM_ID, K.Tokenizer.CHAT_TEMPLATE, K.General.SAMPLING_TEMP, K.General.SAMPLING_TOP_P,
                K.Tokenizer.ADD_BOS):
        fields.pop(key, None)
    fields[K.Tokenizer.PRE] = Field("chatglm-bpe", V.STRING)
    fields[K.Tokenizer.MERGES] = Field(merges, V.ARRAY, V.STRING)
    rewrite_gguf(ours, header, dest, fields)
    return dest

"""One set of numbers for a GLM-4 checkpoint, whichever layout its config.json uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from glm4_local.errors import CheckpointError

Layout = Literal["chatglm", "glm"]

SUPPORTED = (
    "GLM-4 in the original layout (model_type 'chatglm': glm-4-9b-chat, glm-4-9b-chat-1m, glm-4-9b, "
    "codegeex4-all-9b) or the transformers layout (model_type 'glm', GlmForCausalLM: glm-4-9b-chat-hf)"
)

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


@dataclass(frozen=True)
class ModelSpec:
    """Hyper-parameters of a GLM-4 (ChatGLM-4) decoder, in llama.cpp's terms."""

    layout: Layout
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

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "config.json") -> ModelSpec:
        model_type = config.get("model_type")
        if model_type == "chatglm":
            spec = _from_chatglm(config, where)
        elif model_type == "glm":
            spec = _from_glm(config, where)
        elif model_type == "glm4":
            raise CheckpointError(
                f"{where}: model_type 'glm4' (GLM-4-0414, Glm4ForCausalLM) is a different architecture; "
                f"supported: {SUPPORTED}"
            )
        else:
            archs = config.get("architectures") or []
            found = f"model_type {model_type!r}" + (f", architectures {archs}" if archs else "")
            raise CheckpointError(f"{where}: unsupported architecture ({found}); supported: {SUPPORTED}")
        spec.validate(where)
        return spec

    def validate(self, where: str) -> None:
        positive = {
            "layers": self.n_layer, "hidden size": self.n_embd, "attention heads": self.n_head,
            "KV heads": self.n_head_kv, "head dim": self.head_dim, "FFN size": self.n_ff,
            "vocabulary size": self.vocab_size, "context length": self.context_length,
        }
        for what, value in positive.items():
            if value <= 0:
                raise CheckpointError(f"{where}: {what} must be positive, got {value}")
        if self.n_head % self.n_head_kv:
            raise CheckpointError(
                f"{where}: {self.n_head} attention heads do not divide into {self.n_head_kv} KV groups"
            )
        if self.rope_dim % 2 or not 0 < self.rope_dim <= self.head_dim:
            raise CheckpointError(f"{where}: rotary dimension {self.rope_dim} invalid for head dim {self.head_dim}")


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

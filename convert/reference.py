"""A numpy GLM-4 forward pass over the checkpoint's own weights: the yardstick for `verify`.

Written from the architecture description (not from llama.cpp) and streamed one layer at a time,
so a 9B checkpoint needs about one layer of float32 weights in memory, not the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glm4_local.spec import ModelSpec

from .safetensors import SafetensorsCheckpoint
from .tensors import PlannedTensor

_OUTPUT_BLOCK_ROWS = 16384


class ReferenceModel:
    """Logits for a token sequence, computed in float32 from the safetensors checkpoint."""

    def __init__(self, spec: ModelSpec, checkpoint: SafetensorsCheckpoint, plan: Sequence[PlannedTensor]) -> None:
        self.spec = spec
        self.checkpoint = checkpoint
        self.by_name = {p.name: p for p in plan}

    def _weight(self, gguf_name: str) -> np.ndarray:
        planned = self.by_name[gguf_name]
        parts = [self.checkpoint.f32(source) for source in planned.sources]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """Rotate adjacent pairs (x[2i], x[2i+1]) of the first rope_dim dims of each head."""
        n_tokens, rot = x.shape[0], self.spec.rope_dim
        inv_freq = self.spec.rope_base ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
        angles = np.arange(n_tokens, dtype=np.float64)[:, None] * inv_freq[None, :]
        cos = np.cos(angles)[:, None, :].astype(np.float32)
        sin = np.sin(angles)[:, None, :].astype(np.float32)
        out = x.copy()
        even, odd = x[..., 0:rot:2], x[..., 1:rot:2]
        out[..., 0:rot:2] = even * cos - odd * sin
        out[..., 1:rot:2] = even * sin + odd * cos
        return out

    def _attention(self, h: np.ndarray, bid: int) -> np.ndarray:
        s, n = self.spec, h.shape[0]
        qkv = h @ self._weight(f"blk.{bid}.attn_qkv.weight").T
        if s.qkv_bias:
            qkv = qkv + self._weight(f"blk.{bid}.attn_qkv.bias")
        q = self._rope(qkv[:, : s.q_rows].reshape(n, s.n_head, s.head_dim))
        k = self._rope(qkv[:, s.q_rows : s.q_rows + s.kv_rows].reshape(n, s.n_head_kv, s.head_dim))
        v = qkv[:, s.q_rows + s.kv_rows :].reshape(n, s.n_head_kv, s.head_dim)
        group = s.n_head // s.n_head_kv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(s.head_dim))
        scores = scores + np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        probs = _softmax(scores)
        context = np.einsum("hqk,khd->qhd", probs, v).reshape(n, s.q_rows)
        return context @ self._weight(f"blk.{bid}.attn_output.weight").T

    def _mlp(self, h: np.ndarray, bid: int) -> np.ndarray:
        gate_up = h @ self._weight(f"blk.{bid}.ffn_up.weight").T
        gate, up = gate_up[:, : self.spec.n_ff], gate_up[:, self.spec.n_ff :]
        return (gate / (1.0 + np.exp(-gate)) * up) @ self._weight(f"blk.{bid}.ffn_down.weight").T

    def _rms_norm(self, x: np.ndarray, gguf_name: str) -> np.ndarray:
        variance = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
        return (x / np.sqrt(variance + self.spec.rms_eps)).astype(np.float32) * self._weight(gguf_name)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """(len(tokens), vocab) float32 logits, position i predicting token i+1."""
        embedding = self.checkpoint.raw(self.by_name["token_embd.weight"].sources[0])
        name = self.by_name["token_embd.weight"].sources[0]
        x = self.checkpoint.to_f32(name, embedding[np.asarray(tokens)])
        for bid in range(self.spec.n_layer):
            x = x + self._attention(self._rms_norm(x, f"blk.{bid}.attn_norm.weight"), bid)
            x = x + self._mlp(self._rms_norm(x, f"blk.{bid}.ffn_norm.weight"), bid)
        x = self._rms_norm(x, "output_norm.weight")
        head = "output.weight" if "output.weight" in self.by_name else "token_embd.weight"
        source = self.by_name[head].sources[0]
        raw = self.checkpoint.raw(source)
        blocks = [
            x @ self.checkpoint.to_f32(source, raw[i : i + _OUTPUT_BLOCK_ROWS]).T
            for i in range(0, raw.shape[0], _OUTPUT_BLOCK_ROWS)
        ]
        return np.concatenate(blocks, axis=1)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)

"""Importance matrices for llama.cpp's quantizer (which core/llama.py calls)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from glm4_local.core.errors import Glm4LocalError


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Importance values per tensor from a GGUF imatrix file (llama-imatrix's format).

    Each tensor `X` is stored as `X.in_sum2` (sums of squared activations) and `X.counts`
    (tokens seen, per expert); the quantizer wants their ratio, as llama-quantize computes it.
    """
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise Glm4LocalError(f"{path}: not a GGUF imatrix file ({e})") from e
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    values: dict[str, np.ndarray] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise Glm4LocalError(f"{path}: {base} has sums but no counts")
        per_expert = sums.reshape(len(counts), -1)
        safe = np.where(counts > 0, counts, 1.0)[:, None]
        values[base] = np.where(counts[:, None] > 0, per_expert / safe, 1.0).astype(np.float32).reshape(-1)
    if not values:
        raise Glm4LocalError(f"{path}: no importance data found (expected tensors named *.in_sum2)")
    return values

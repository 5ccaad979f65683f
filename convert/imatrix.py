"""Importance matrices for llama.cpp's quantizer: read llama-imatrix's files, or make one ourselves.

An importance matrix holds, for each weight matrix, the mean square of each input column over a
calibration text; the quantizer spends its precision where inputs are large. `compute_imatrix` runs
the 16-bit GGUF in llama.cpp over the built-in text and collects exactly what llama-imatrix collects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama import activations, door

CALIBRATION_NAME = "glm4-local built-in text"


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Importance values per tensor from a GGUF imatrix file (llama-imatrix's format).

    Each tensor `X` is stored as `X.in_sum2` (sums of squared activations) and `X.counts`
    (tokens seen, per expert); the quantizer wants their ratio, as llama-quantize computes it.
    """
    try:
        reader = gguf.GGUFReader(path)
        tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    except OSError as e:
        raise Glm4LocalError(f"{path}: cannot read ({e.strerror or e})") from e
    except Exception as e:  # gguf's reader raises IndexError, KeyError, ValueError ... on a corrupt file
        raise Glm4LocalError(f"{path}: not a GGUF imatrix file ({type(e).__name__}: {e})") from None
    values: dict[str, np.ndarray] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise Glm4LocalError(f"{path}: {base} has sums but no counts")
        if not len(counts) or sums.size % len(counts):
            raise Glm4LocalError(f"{path}: {base} has {sums.size} sums for {len(counts)} counts")
        per_expert = sums.reshape(len(counts), -1)
        safe = np.where(counts > 0, counts, 1.0)[:, None]
        values[base] = np.where(counts[:, None] > 0, per_expert / safe, 1.0).astype(np.float32).reshape(-1)
    if not values:
        raise Glm4LocalError(f"{path}: no importance data found (expected tensors named *.in_sum2)")
    return values


@dataclass(frozen=True)
class Importance:
    """Per weight: the sums of squared inputs per column, and how many input rows were summed."""

    sums: dict[str, np.ndarray]
    rows: dict[str, int]
    chunks: int
    chunk_size: int

    def values(self) -> dict[str, np.ndarray]:
        """Mean squares per column: what llama.cpp's quantizer is given."""
        return {name: (self.sums[name] / max(self.rows[name], 1)).astype(np.float32) for name in self.sums}


def is_layer_weight(name: str) -> bool:
    """The matrices llama-imatrix measures by default: every layer weight (not the output layer)."""
    return name.startswith("blk.") and name.endswith(".weight")


def compute_imatrix(gguf_path: Path, text: str, chunk_size: int = 512, threads: int | None = None,
                    on_tokens: Callable[[int], None] | None = None) -> Importance:
    """Run `gguf_path` in llama.cpp over `text` in chunks of `chunk_size` tokens."""
    model = door.load(gguf_path, n_ctx=chunk_size, n_threads=threads)
    tokens = door.tokenize(model, text)
    chunks = [tokens[i : i + chunk_size] for i in range(0, len(tokens), chunk_size)]
    if not chunks:
        raise Glm4LocalError("the calibration text is empty")
    sums, rows = activations.squared_matmul_inputs(model, chunks, is_layer_weight, on_tokens)
    if not sums:
        raise Glm4LocalError(f"{gguf_path}: no weight's inputs were seen while running the calibration text")
    return Importance({n: s.astype(np.float32) for n, s in sums.items()}, rows, len(chunks), chunk_size)


def write_imatrix(path: Path, importance: Importance) -> None:
    """In llama-imatrix's GGUF layout: `X.in_sum2` (sums of squares) and `X.counts` for each weight X."""
    writer = gguf.GGUFWriter(path, "imatrix")
    writer.add_type("imatrix")
    writer.add_array(gguf.Keys.IMatrix.DATASETS, [CALIBRATION_NAME])
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, importance.chunks)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, importance.chunk_size)
    for name, sums in importance.sums.items():
        writer.add_tensor(f"{name}.in_sum2", sums.reshape(1, -1).astype(np.float32))
        writer.add_tensor(f"{name}.counts", np.array([[float(importance.rows[name])]], dtype=np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()

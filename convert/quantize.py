"""Quantize a 16-bit GGUF with llama.cpp's own quantizer (`llama_model_quantize`)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import gguf
import numpy as np

from glm4_local.errors import Glm4LocalError

# Rows of one tensor the quantizer holds at once; its default (8 GiB) would dominate peak memory.
MAX_BUFFER_BYTES = 256 * 1024 * 1024


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


def _imatrix_array(values: dict[str, np.ndarray]):  # -> ctypes array, kept alive by the caller
    import llama_cpp

    entries = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    keep: list[object] = []
    for i, (name, data) in enumerate(values.items()):
        encoded = name.encode()
        keep.append(encoded)
        keep.append(data)
        entries[i].name = encoded
        entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = data.size
    return entries, keep


def quantize(source: Path, dest: Path, file_type: gguf.LlamaFileType,
             imatrix: dict[str, np.ndarray] | None = None, threads: int = 0) -> None:
    """Quantize `source` into `dest`; raise Glm4LocalError when llama.cpp reports failure.

    The C call runs in a worker thread so that Ctrl-C still reaches Python at once: the caller's
    cleanup then removes the half-written file while the worker is abandoned.
    """
    import llama_cpp

    from glm4_local.runtime import capture_llama_logs

    errors = capture_llama_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = threads
    params.max_buf_size = MAX_BUFFER_BYTES
    keep_alive: object = None
    if imatrix is not None:
        entries, keep_alive = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
        ),
        daemon=True,
    )
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.2)
    del keep_alive
    if not result or result[0] != 0:
        detail = next((e for e in errors if e), f"code {result[0] if result else '?'}")
        raise Glm4LocalError(f"{dest}: llama.cpp quantizer failed ({detail})")

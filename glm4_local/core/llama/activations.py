"""Activations of the matrix multiplications, as llama.cpp's imatrix tool collects them.

Reads llama.cpp's compute graph through its eval callback, so it depends on ggml's tensor layout
(checked on the first node it reads).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import gguf
import numpy as np

from glm4_local.core.errors import Glm4LocalError

Q = gguf.GGMLQuantizationType


class _GGMLTensor(ctypes.Structure):
    """ggml.h's struct ggml_tensor in the ggml that llama-cpp-python 0.3.36 vendors (checked when used)."""


_GGMLTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_GGMLTensor) * 10), ("view_src", ctypes.POINTER(_GGMLTensor)),
    ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]


def _ggml() -> Any:
    from llama_cpp import _ggml as ggml

    lib = ggml.libggml
    for name, restype in (("ggml_get_name", ctypes.c_char_p), ("ggml_op_desc", ctypes.c_char_p),
                          ("ggml_nelements", ctypes.c_int64)):
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    return lib


class _SquaredInputs:
    """Sums of squared inputs, per input column, of every matrix multiplication by a wanted weight."""

    def __init__(self, wanted: Callable[[str], bool]) -> None:
        self.wanted = wanted
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}
        self.layout_checked = False
        self.lib = _ggml()

    def observe(self, pointer: int, ask: bool) -> bool:
        if self.lib.ggml_op_desc(pointer) != b"MUL_MAT":
            return not ask  # not wanted; when asked after the fact, carry on
        node = ctypes.cast(pointer, ctypes.POINTER(_GGMLTensor)).contents
        if not self.layout_checked:
            self._check_layout(pointer, node)
        weight = node.src[0].contents.name.decode("utf-8", errors="replace")
        if not self.wanted(weight):
            return not ask
        if ask:
            return True
        x = node.src[1].contents
        if x.type != int(Q.F32) or x.nb[1] != x.ne[0] * 4 or not x.data:
            raise Glm4LocalError(f"cannot read the input of {weight} (type {x.type}, not contiguous f32)")
        rows = int(x.ne[1] * x.ne[2] * x.ne[3])
        values = np.ctypeslib.as_array((ctypes.c_float * (x.ne[0] * rows)).from_address(x.data))
        squares = np.square(values.reshape(rows, x.ne[0]), dtype=np.float64).sum(axis=0)
        self.sums[weight] = self.sums.get(weight, 0.0) + squares
        self.rows[weight] = self.rows.get(weight, 0) + rows
        return True

    def _check_layout(self, pointer: int, node: _GGMLTensor) -> None:
        if (self.lib.ggml_get_name(pointer) != node.name
                or self.lib.ggml_nelements(pointer) != node.ne[0] * node.ne[1] * node.ne[2] * node.ne[3]):
            raise Glm4LocalError("this llama.cpp build's tensor layout is not the one glm4-local knows; "
                                 "make an importance matrix with llama-imatrix instead")
        self.layout_checked = True


def squared_matmul_inputs(llm: Any, chunks: Sequence[list[int]], wanted: Callable[[str], bool],
                          on_chunk: Callable[[int], None] | None = None
                          ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Run `llm` over each chunk of tokens (from an empty cache); per wanted weight, the sums of its
    inputs' squares per column and the number of rows summed: what llama.cpp's imatrix tool collects."""
    import llama_cpp

    collector = _SquaredInputs(wanted)
    failure: list[BaseException] = []

    @llama_cpp.ggml_backend_sched_eval_callback
    def callback(pointer: int, ask: bool, user_data: object) -> bool:
        try:
            return collector.observe(pointer, ask)
        except Exception as e:  # must not cross into C; reported after the decode
            failure.append(e)
            return False

    params = llama_cpp.llama_context_default_params()
    longest = max(len(c) for c in chunks)
    params.n_ctx = params.n_batch = params.n_ubatch = longest
    params.n_threads = params.n_threads_batch = llm.context_params.n_threads
    params.cb_eval = callback
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise Glm4LocalError("llama.cpp could not make a context to collect activations")
    try:
        for chunk in chunks:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            tokens = (llama_cpp.llama_token * len(chunk))(*chunk)
            status = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(chunk)))
            if failure:
                raise failure[0]
            if status != 0:
                raise Glm4LocalError(f"llama.cpp failed to evaluate the calibration text (code {status})")
            if on_chunk:
                on_chunk(len(chunk))
    finally:
        llama_cpp.llama_free(ctx)
    return collector.sums, collector.rows

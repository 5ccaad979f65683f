"""The door to llama.cpp (llama-cpp-python): loading, tokens, logits, logs, offload, quantizing.

Only the modules of core/llama/ import llama_cpp: this one, the decode loop (decoder.py), its
sampler chains (sampling.py) and the activation collector (activations.py). Models come back as
llama-cpp-python `Llama` (or, for the decoder, `LlamaModel`) objects.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from glm4_local.core.errors import GGUFFileError, Glm4LocalError
from glm4_local.core.gguf.checks import check_model
from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.llama import file_pages
from glm4_local.core.llama.huge_pages import WeightBuffers

Q = gguf.GGMLQuantizationType
# KV-cache types a user can choose: name -> ggml type
CACHE_TYPES: dict[str, gguf.GGMLQuantizationType] = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
# Rows of one tensor the quantizer holds at once; its default (8 GiB) would dominate peak memory.
QUANTIZE_BUFFER_BYTES = 256 * 1024 * 1024
_GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT
_KEPT_ERRORS = 64

_errors: list[str] = []
_listeners: list[Callable[[str], None]] = []  # see every log line while registered (e.g. quantizer progress)
_log_callback = None  # kept referenced: llama.cpp holds a raw pointer to it
_QUANTIZED_TENSOR = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")  # the quantizer's "[  12/ 284] blk.0..." lines
REPACK_ENV = "GLM4_LOCAL_CPU_REPACK"  # 1/on or 0/off: weights in llama.cpp's extra CPU buffers, or not
_YES, _NO = ("1", "on", "yes", "true"), ("0", "off", "no", "false")


def capture_logs() -> list[str]:
    """Route llama.cpp's log through us: drop its chatter, keep error lines for our messages."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:

        @llama_cpp.llama_log_callback
        def on_log(level: int, text: bytes, user_data: object) -> None:
            line = text.decode("utf-8", errors="replace")
            if level == _GGML_LOG_LEVEL_ERROR:
                _errors.append(line.strip())
                del _errors[:-_KEPT_ERRORS]  # a server runs for weeks: keep the latest only
            for listener in _listeners:
                listener(line)

        _log_callback = on_log
        llama_cpp.llama_log_set(on_log, None)
    _errors.clear()
    return _errors


@contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """`listener` hears every llama.cpp log line while the block runs (e.g. the KV buffer sizes it
    allocates, the quantizer's progress)."""
    capture_logs()
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


@functools.cache
def cpu_repacking() -> tuple[bool, str]:
    """Whether llama.cpp may keep weights in its extra CPU buffer types (rows repacked for the CPU's matrix
    instructions; AMX tiles where the CPU has AMX), and why. Off where the CPU has AMX: llama.cpp then puts
    q4/q8 weights in its AMX buffer first, and its AMX matrix product segfaults at the first decode on some of
    these machines (ggml-org/llama.cpp#20824: every q8_0 model on a Sapphire Rapids VM here, llama-server's
    too), a crash no error message can follow. $GLM4_LOCAL_CPU_REPACK (1 or 0) decides instead."""
    chosen = os.environ.get(REPACK_ENV, "").strip().lower()
    if chosen in _YES + _NO:
        return chosen in _YES, f"${REPACK_ENV}={chosen}"
    if re.search(r"\bAMX_INT8 = 1\b", system_info()):
        return False, f"off on this AMX CPU (llama.cpp's AMX kernels crash on some; ${REPACK_ENV}=1 turns it on)"
    return True, "on"


@functools.cache
def llama_defaults_follow_repacking() -> None:
    """llama-cpp-python's `Llama` takes no option for llama.cpp's extra CPU buffers: the model defaults it
    asks for are wrapped, once, to follow cpu_repacking() (as load_model's do)."""
    from llama_cpp import llama_cpp

    original = llama_cpp.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = cpu_repacking()[0]
        return params

    llama_cpp.llama_model_default_params = defaults


def gpu_offload_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def load(path: Path, header: GGUFHeader | None = None, n_ctx: int = 512, logits_all: bool = False,
         vocab_only: bool = False, n_gpu_layers: int = 0, n_threads: int | None = None,
         exact_cache: bool = False, n_batch: int | None = None,
         type_k: gguf.GGMLQuantizationType | None = None, type_v: gguf.GGMLQuantizationType | None = None,
         **extra: Any) -> Any:  # llama_cpp.Llama
    """A llama.cpp model for a GGUF glm4-local runs; GGUFFileError if the header check or llama.cpp refuses it.

    `header`: the file's header when the caller has already checked it (it takes ~1 s for GLM-4).
    `exact_cache` keeps the KV cache in f32 so that measured errors are the file's, not the cache's.
    """
    from llama_cpp import Llama

    if exact_cache:
        type_k = type_v = Q.F32
    cache = {name: int(t) for name, t in (("type_k", type_k), ("type_v", type_v)) if t is not None}
    llama_defaults_follow_repacking()
    with _loading(path, header), _without_chat_formatters():
        return Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
            n_gpu_layers=n_gpu_layers, n_threads=n_threads or max(1, os.cpu_count() or 2),
            n_batch=n_batch or min(n_ctx, 512), verbose=False, **cache, **extra,
        )


def load_mode(use_mmap: bool, use_mlock: bool) -> int:
    """llama.cpp's one load mode for the two choices (it has no separate mmap and mlock flags any more: setting
    those on its model parameters is silently nothing)."""
    import llama_cpp as ll

    modes = {(True, False): ll.LLAMA_LOAD_MODE_MMAP, (True, True): ll.LLAMA_LOAD_MODE_MMAP_MLOCK,
             (False, True): ll.LLAMA_LOAD_MODE_MLOCK, (False, False): ll.LLAMA_LOAD_MODE_NONE}
    return int(modes[use_mmap, use_mlock])


def load_model(path: Path, header: GGUFHeader | None = None, n_gpu_layers: int = 0, use_mmap: bool = True,
               use_mlock: bool = False, vocab_only: bool = False, huge_pages: bool = False,
               memory_available: int | None = None) -> Any:  # llama_cpp._internals.LlamaModel
    """The weights and vocabulary alone (no context): for decoder.py's contexts; `vocab_only`: the vocabulary
    alone (a front whose engines hold the weights); `huge_pages`: the weights read (not mapped) into 2 MiB
    pages where the kernel gives them (core/llama/huge_pages.py). Mapped weights that stay on the CPU are first
    settled in 2 MiB page-cache folios where they are not and the file fits `memory_available` (where known;
    core/llama/file_pages.py). GGUFFileError as load()."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers
    params.load_mode = load_mode(use_mmap and not huge_pages, use_mlock)
    params.vocab_only = vocab_only
    params.use_extra_bufts = cpu_repacking()[0]
    if huge_pages:
        buffers = WeightBuffers()
        # first called once the weight buffers exist and before any weight is read into them
        advise = llama_cpp.llama_progress_callback(lambda progress, user_data: buffers.advise() >= 0)
        params.progress_callback = advise
    mapped_on_cpu = use_mmap and not huge_pages and not vocab_only \
        and not (n_gpu_layers < 0 and gpu_offload_available())
    with _loading(path, header):
        if mapped_on_cpu:
            logging.getLogger(__name__).debug("%s: %s", path, file_pages.settle(path, room=memory_available))
        # verbose: llama-cpp-python's quiet mode points the whole process's stdout and stderr at /dev/null while
        # it loads, which swallows what other threads print meanwhile (serve loads as it starts); llama.cpp's
        # own log comes to capture_logs() either way
        return LlamaModel(path_model=str(path), params=params, verbose=True)


@contextmanager
def _loading(path: Path, header: GGUFHeader | None) -> Iterator[None]:
    """Check the header first (unless the caller has), then make whatever llama.cpp raises while
    loading one GGUFFileError naming its first error line."""
    if header is None:
        check_model(path)
    errors = capture_logs()
    try:
        yield
    except Exception as e:  # llama-cpp-python raises ValueError, RuntimeError and others for a bad file
        detail = next((line for line in errors if line), str(e) or type(e).__name__)
        raise GGUFFileError(f"{path}: llama.cpp could not load it ({detail})") from e


class _NoFormatter:
    """Stands in for llama-cpp-python's Jinja chat formatter, which glm4-local never uses."""

    def __init__(self, **_: object) -> None:
        pass

    def to_chat_handler(self) -> None:
        return None


@contextmanager
def _without_chat_formatters() -> Iterator[None]:
    """llama-cpp-python compiles every chat template in a file while loading it, unguarded: a template
    that is not valid Jinja raises, and one like `{{ 9 ** 999999999 }}` hangs the load (Jinja folds
    constants while compiling). glm4-local renders templates itself, bounded (chat/template.py)."""
    from llama_cpp import llama_chat_format

    original = llama_chat_format.Jinja2ChatFormatter
    llama_chat_format.Jinja2ChatFormatter = _NoFormatter  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        llama_chat_format.Jinja2ChatFormatter = original  # type: ignore[misc]


def tokenize(llm: Any, text: str, special: bool = False) -> list[int]:
    """Token ids; `special` lets markup such as <|user|> become special tokens (never for user text)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def token_piece(model: Any, token: int, special: bool = False) -> bytes:
    """A token's bytes, however long it is: llama-cpp-python's detokenize gives every piece a 32-byte
    buffer and returns nothing for a longer one (GLM-4 has 227 such tokens: runs of spaces, rules of
    "=" or "-", long identifiers), so a reply containing one would silently lose text."""
    import llama_cpp

    vocab = model._model.vocab if hasattr(model, "_model") else model.vocab  # a Llama, or a LlamaModel
    size = 64
    while True:
        buffer = (ctypes.c_char * size)()
        n = llama_cpp.llama_token_to_piece(vocab, llama_cpp.llama_token(token), buffer, size, 0, special)
        if n >= 0:
            return bytes(buffer[:n])
        size = -n  # what it needs


def end_of_generation(llm: Any, candidates: list[int]) -> list[int]:
    """Which of `candidates` llama.cpp itself ends generation on (its EOG set, as every runtime on it sees)."""
    import llama_cpp

    vocab = llm._model.vocab  # llama-cpp-python keeps the llama_vocab pointer here
    return [t for t in candidates if llama_cpp.llama_vocab_is_eog(vocab, t)]


def all_logits(llm: Any, tokens: list[int]) -> np.ndarray:
    """(len(tokens), vocab) logits from one fresh evaluation (needs a model loaded with logits_all)."""
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def _imatrix_array(values: dict[str, np.ndarray]) -> tuple[Any, list[object]]:
    """The quantizer's imatrix entries, and the objects that must outlive the call."""
    import llama_cpp

    entries = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    keep: list[object] = [entries]
    for i, (name, data) in enumerate(values.items()):
        encoded = name.encode()
        keep += [encoded, data]
        entries[i].name = encoded
        entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = data.size
    return entries, keep


def quantize(source: Path, dest: Path, file_type: gguf.LlamaFileType,
             imatrix: dict[str, np.ndarray] | None = None, threads: int = 0,
             on_tensor: Callable[[int, int], None] | None = None) -> None:
    """Quantize GGUF `source` into `dest` with llama.cpp's quantizer; Glm4LocalError when it fails.

    `on_tensor(done, total)` hears of each tensor as the quantizer reaches it (from its log). The C
    call runs in a worker thread so that Ctrl-C still reaches Python at once: the caller's cleanup
    then removes the half-written file while the worker is abandoned.
    """
    import llama_cpp

    errors = capture_logs()

    def progress(line: str) -> None:
        match = _QUANTIZED_TENSOR.match(line)
        if match and on_tensor:
            on_tensor(int(match.group(1)), int(match.group(2)))

    _listeners.append(progress)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = threads
    params.max_buf_size = QUANTIZE_BUFFER_BYTES
    keep_alive: list[object] = []
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
    try:
        while worker.is_alive():
            worker.join(timeout=0.2)
    finally:
        _listeners.remove(progress)
    del keep_alive
    if not result or result[0] != 0:
        detail = next((e for e in errors if e), f"code {result[0] if result else '?'}")
        raise Glm4LocalError(f"{dest}: llama.cpp quantizer failed ({detail})")

"""The one place that talks to llama.cpp (llama-cpp-python) for inference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glm4_local.errors import GGUFFileError
from glm4_local.gguf_file import check_glm4

F32_CACHE = 0  # GGML_TYPE_F32


def load(path: Path, n_ctx: int = 512, logits_all: bool = False, vocab_only: bool = False,
         n_gpu_layers: int = 0, n_threads: int | None = None, exact_cache: bool = False):  # -> llama_cpp.Llama
    """A llama.cpp model for a checked GLM-4 GGUF; GGUFFileError if llama.cpp refuses it.

    `exact_cache` keeps the KV cache in f32 so that measured errors are the file's, not the cache's.
    """
    check_glm4(path)
    from llama_cpp import Llama

    cache = {"type_k": F32_CACHE, "type_v": F32_CACHE} if exact_cache else {}
    errors = capture_llama_logs()
    try:
        return Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
            n_gpu_layers=n_gpu_layers, n_threads=n_threads or max(1, (os.cpu_count() or 2)),
            n_batch=min(n_ctx, 512), verbose=False, **cache,
        )
    except (ValueError, RuntimeError) as e:
        detail = next((line for line in errors if line), str(e))
        raise GGUFFileError(f"{path}: llama.cpp could not load it ({detail})") from e


_errors: list[str] = []
_log_callback = None  # kept referenced: llama.cpp holds a raw pointer to it


def capture_llama_logs() -> list[str]:
    """Route llama.cpp's log through us: drop its chatter, keep error lines for our messages."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:

        @llama_cpp.llama_log_callback
        def on_log(level: int, text: bytes, user_data: object) -> None:
            if level == 4:  # GGML_LOG_LEVEL_ERROR (ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT)
                _errors.append(text.decode("utf-8", errors="replace").strip())

        _log_callback = on_log
        llama_cpp.llama_log_set(on_log, None)
    _errors.clear()
    return _errors


def tokenize(llm, text: str, special: bool = False) -> list[int]:
    """Token ids; `special` lets markup such as <|user|> become special tokens (never for user text)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def all_logits(llm, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) logits from one fresh evaluation (needs logits_all=True)."""
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)

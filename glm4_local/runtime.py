"""The one place that talks to llama.cpp (llama-cpp-python) for inference."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glm4_local.errors import GGUFFileError, Glm4LocalError
from glm4_local.gguf_file import check_glm4
from glm4_local.gguf_header import GGUFHeader
from glm4_local.template import Piece, merged_text

CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}  # GGML type ids
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")

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


def gpu_offload_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def load(path: Path, n_ctx: int = 512, logits_all: bool = False, vocab_only: bool = False,
         n_gpu_layers: int = 0, n_threads: int | None = None, exact_cache: bool = False,
         n_batch: int | None = None, header: GGUFHeader | None = None,
         **extra: object):  # -> llama_cpp.Llama
    """A llama.cpp model for a checked GLM-4 GGUF; GGUFFileError if llama.cpp refuses it.

    `exact_cache` keeps the KV cache in f32 so that measured errors are the file's, not the cache's.
    `header`: the file's header when the caller has already checked it (it takes ~1 s for GLM-4).
    """
    if header is None:
        check_glm4(path)
    from llama_cpp import Llama

    cache = {"type_k": CACHE_TYPES["f32"], "type_v": CACHE_TYPES["f32"]} if exact_cache else {}
    errors = capture_llama_logs()
    try:
        return Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
            n_gpu_layers=n_gpu_layers, n_threads=n_threads or max(1, (os.cpu_count() or 2)),
            n_batch=n_batch or min(n_ctx, 512), verbose=False, **cache, **extra,
        )
    except (ValueError, RuntimeError) as e:
        detail = next((line for line in errors if line), str(e))
        raise GGUFFileError(f"{path}: llama.cpp could not load it ({detail})") from e


def tokenize(llm, text: str, special: bool = False) -> list[int]:
    """Token ids; `special` lets markup such as <|user|> become special tokens (never for user text)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def all_logits(llm, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) logits from one fresh evaluation (needs logits_all=True)."""
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0


@dataclass
class Timings:
    prompt_tokens: int = 0  # the whole prompt
    evaluated_tokens: int = 0  # what had to be computed: prompt minus the reused cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tps(self) -> float:
        return self.evaluated_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.generated_tokens - 1) / self.decode_seconds if self.decode_seconds else 0.0


@dataclass
class Generation:
    """A reply being generated: iterate for text chunks; `stopped_by` and `timings` fill in as it runs."""

    chunks: Iterator[str]
    timings: Timings = field(default_factory=Timings)
    stopped_by: str | None = None  # a stop token's text, "max_tokens", or None while running


class ChatRuntime:
    """One loaded GLM-4 model; keeps its KV cache across turns so each turn evaluates only new tokens."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.special_ids = {t: self._special_id(t) for t in (*STOP_TOKENS, "[gMASK]", "<sop>", "<|system|>",
                                                            "<|assistant|>")}
        self.stop_ids = {self.special_ids[t]: t for t in STOP_TOKENS}
        self._pieces: dict[int, bytes] = {}  # token -> its bytes; a dict lookup beats a ctypes call per token

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            # control tokens other than the stops (e.g. [sMASK]) are not text: they render as nothing
            piece = self._pieces[token] = self.llm.detokenize([token], special=False)
        return piece

    def _special_id(self, text: str) -> int:
        ids = tokenize(self.llm, text, special=True)
        if len(ids) != 1:
            raise GGUFFileError(f"model vocabulary has no special token {text}")
        return ids[0]

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def tokens(self, pieces: Sequence[Piece]) -> list[int]:
        """Markup pieces become their special token; text between them is tokenized as plain text."""
        ids: list[int] = []
        for piece in merged_text(pieces):
            if piece.special:
                if piece.text not in self.special_ids:
                    self.special_ids[piece.text] = self._special_id(piece.text)
                ids.append(self.special_ids[piece.text])
            else:
                ids.extend(tokenize(self.llm, piece.text))
        return ids

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` are already in the KV cache."""
        cached = self.llm.input_ids  # the tokens the KV cache holds
        n = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            n += 1
        return n

    def generate(self, prompt: Sequence[int], sampling: Sampling, max_tokens: int | None,
                 seed: int | None = None) -> Generation:
        if len(prompt) >= self.n_ctx:
            raise Glm4LocalError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        budget = self.n_ctx - len(prompt)
        limit = min(max_tokens, budget) if max_tokens else budget
        generation = Generation(iter(()))
        generation.chunks = self._stream(list(prompt), sampling, limit, seed, generation)
        return generation

    def _stream(self, prompt: list[int], sampling: Sampling, limit: int, seed: int | None,
                gen: Generation) -> Iterator[str]:
        if seed is not None:
            self.llm.set_seed(seed)
        timings = gen.timings
        timings.prompt_tokens = len(prompt)
        timings.evaluated_tokens = len(prompt) - min(self.cached_prefix(prompt), len(prompt) - 1)
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        stop_ids, piece, clock = self.stop_ids, self.piece, time.perf_counter
        started = clock()
        first_at = started
        tokens = self.llm.generate(prompt, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
                                   temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty)
        try:
            for count, token in enumerate(tokens, 1):
                now = clock()
                if count == 1:
                    first_at = now
                    timings.prefill_seconds = now - started
                timings.generated_tokens = count
                timings.decode_seconds = now - first_at
                if token in stop_ids:
                    gen.stopped_by = stop_ids[token]
                    break
                text = decode(piece(token))
                if text:
                    yield text
                if count >= limit:
                    gen.stopped_by = "max_tokens"
                    break
            # bytes of a character cut off by max_tokens are dropped, not shown as U+FFFD
        finally:
            tokens.close()

"""A loaded model in a conversation: prompt pieces to tokens, KV-cache reuse, streamed generation."""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from glm4_local.chat.template import Piece, merged_text
from glm4_local.core.errors import GGUFFileError, Glm4LocalError
from glm4_local.core.llama import tokenize
from glm4_local.core.model_family import ModelFamily


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int = 0
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
    # a stop token's text; "max_tokens" (the reply's limit) or "context" (no room left); None while running
    stopped_by: str | None = None


class ChatRuntime:
    """One loaded model; keeps its KV cache across turns so each turn evaluates only new tokens."""

    def __init__(self, llm: Any, family: ModelFamily) -> None:
        self.llm = llm
        self.family = family
        self.special_ids = {t: self._special_id(t) for t in dict.fromkeys((*family.stop_tokens,
                                                                           *family.markup_tokens))}
        self.stop_ids = {self.special_ids[t]: t for t in family.stop_tokens}
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
        cut = "max_tokens" if max_tokens and max_tokens <= budget else "context"
        generation.chunks = self._stream(list(prompt), sampling, limit, seed, generation, cut)
        return generation

    def _stream(self, prompt: list[int], sampling: Sampling, limit: int, seed: int | None,
                gen: Generation, cut: str) -> Iterator[str]:
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
                    gen.stopped_by = cut
                    break
            # bytes of a character cut off by max_tokens are dropped, not shown as U+FFFD
        finally:
            tokens.close()

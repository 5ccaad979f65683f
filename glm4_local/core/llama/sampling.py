"""Sampling in llama.cpp: one job's sampler chain (penalties, top-k/p, min-p, temperature, seed) and
its grammar, all run in C. One of the modules of core/llama/, the only ones importing llama_cpp.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from glm4_local.core.errors import Glm4LocalError

PENALTY_WINDOW = 64  # tokens the repeat/frequency/presence penalties look back over (llama.cpp's default)


class DecodeError(Glm4LocalError):
    """llama.cpp could not make a context, build a sampler or evaluate a batch."""


class GrammarError(DecodeError):
    """A grammar llama.cpp's parser refuses."""


@dataclass(frozen=True)
class SamplerSettings:
    """How one reply is sampled: the one settings type of chat, serve and the decoder."""

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None  # None: a random seed
    grammar: str | None = None  # GBNF with a `root` rule; the output must match it

    def updated(self, **changes: Any) -> SamplerSettings:
        """These settings with the given fields changed; a None value leaves its field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _penalised(s: SamplerSettings) -> bool:
    return s.repeat_penalty != 1.0 or bool(s.frequency_penalty) or bool(s.presence_penalty)


def _sampler_chain(n_vocab: int, s: SamplerSettings) -> Any:
    """llama.cpp's sampler chain for `s` (the grammar apart: see Sampler)."""
    import llama_cpp as ll

    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    if not chain:
        raise DecodeError("llama.cpp could not make a sampler")
    stages: list[Any] = []
    if _penalised(s):
        stages.append(ll.llama_sampler_init_penalties(n_vocab, PENALTY_WINDOW, s.repeat_penalty,
                                                      s.frequency_penalty, s.presence_penalty))
    if s.temperature <= 0:
        stages.append(ll.llama_sampler_init_greedy())
    else:
        if s.top_k > 0:
            stages.append(ll.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            stages.append(ll.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            stages.append(ll.llama_sampler_init_min_p(s.min_p, 1))
        stages.append(ll.llama_sampler_init_temp(s.temperature))
        stages.append(ll.llama_sampler_init_dist(ll.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF))
    for stage in stages:
        ll.llama_sampler_chain_add(chain, stage)  # the chain owns and frees them
    return chain


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data
MAX_ROW_VIEWS = 64  # distinct row addresses remembered (a step's rows, in the buffers llama.cpp has had)


class LogitRows:
    """Numpy views of a context's rows of logits, made once per row address: np.ctypeslib.as_array builds
    a ctypes array type on every call, 72 µs for a row of GLM-4's 151,552 logits (measured right after a
    llama_decode, 12 × 1024 q8_0 on 2 cores) where the argmax over the row takes 28-43 µs. A view is
    only ever read at an address llama.cpp has just given for a row, so it never outlives its buffer."""

    def __init__(self, n_vocab: int) -> None:
        import llama_cpp as ll

        self._ll = ll
        self._row_type = ctypes.c_float * n_vocab
        self._views: dict[int, np.ndarray] = {}

    def at(self, ctx: Any, index: int) -> np.ndarray:
        """The logits of batch index `index` of the last llama_decode."""
        pointer = self._ll.llama_get_logits_ith(ctx, index)
        if not pointer:
            raise DecodeError(f"llama.cpp has no logits for batch index {index}")
        address = ctypes.addressof(pointer.contents)
        view = self._views.get(address)
        if view is None:
            if len(self._views) >= MAX_ROW_VIEWS:
                self._views.clear()
            view = self._views[address] = np.frombuffer(self._row_type.from_address(address), dtype=np.float32)
        return view


class Sampler:
    """One job's sampler chain, and its grammar applied as llama.cpp's own samplers do: the token the
    chain picks from all logits is checked against the grammar alone, and only when the grammar
    refuses it is the whole vocabulary filtered (which for GLM-4's 151,552 tokens costs ~30 ms)."""

    def __init__(self, vocab: Any, n_vocab: int, settings: SamplerSettings, rows: LogitRows) -> None:
        import llama_cpp as ll

        self._ll = ll
        self.n_vocab = n_vocab
        self.rows = rows
        self.grammar = None
        if settings.grammar is not None:
            self.grammar = ll.llama_sampler_init_grammar(vocab, settings.grammar.encode("utf-8"), b"root")
            if not self.grammar:
                raise GrammarError("llama.cpp could not parse the grammar")
            self.candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self.single = ll.llama_token_data()
        # plain greedy needs no chain: an argmax over the logits (llama.cpp's greedy sampler also takes
        # the first of equal maxima) saves copying 151,552 candidates per token (~0.5 ms on a laptop)
        self.argmax = settings.temperature <= 0 and settings.grammar is None and not _penalised(settings)
        try:
            self.chain = _sampler_chain(n_vocab, settings)
        except DecodeError:
            self.free()
            raise

    def sample(self, ctx: Any, index: int) -> int:
        ll = self._ll
        if self.argmax:
            return int(self.rows.at(ctx, index).argmax())
        if self.grammar is None:
            return int(ll.llama_sampler_sample(self.chain, ctx, index))
        logits = self.rows.at(ctx, index)
        token = self._pick(logits, constrained=False)
        if not self._allowed(token):
            token = self._pick(logits, constrained=True)
        ll.llama_sampler_accept(self.grammar, token)
        ll.llama_sampler_accept(self.chain, token)
        return token

    def _pick(self, logits: np.ndarray, constrained: bool) -> int:
        ll, data = self._ll, self.candidates
        data["id"] = np.arange(self.n_vocab, dtype=np.int32)
        data["logit"] = logits
        data["p"] = 0.0
        array = ll.llama_token_data_array(data.ctypes.data_as(ll.llama_token_data_p), self.n_vocab, -1, False)
        if constrained:
            ll.llama_sampler_apply(self.grammar, ctypes.byref(array))
        ll.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(array.data[array.selected].id)  # samplers may move `data`: read it through the array

    def _allowed(self, token: int, grammar: Any = None) -> bool:
        ll = self._ll
        self.single.id, self.single.logit, self.single.p = token, 1.0, 0.0
        array = ll.llama_token_data_array(ctypes.pointer(self.single), 1, -1, False)
        ll.llama_sampler_apply(grammar or self.grammar, ctypes.byref(array))
        return bool(np.isfinite(array.data[0].logit))

    def grammar_allows(self, tokens: list[int]) -> int:
        """How many of `tokens`, from the first, the grammar accepts in its present state (a copy of the
        grammar is walked through them; the real one only ever sees tokens sampled)."""
        ll, walker = self._ll, self._ll.llama_sampler_clone(self.grammar)
        try:
            for count, token in enumerate(tokens):
                if not self._allowed(token, walker):
                    return count
                ll.llama_sampler_accept(walker, token)
            return len(tokens)
        finally:
            ll.llama_sampler_free(walker)

    def free(self) -> None:
        for sampler in (getattr(self, "chain", None), self.grammar):
            if sampler:
                self._ll.llama_sampler_free(sampler)
        self.chain = self.grammar = None


_STDERR_LOCK = threading.Lock()
MAX_GRAMMAR_ERROR = 300  # characters of llama.cpp's parse error kept for the message


@contextlib.contextmanager
def _stderr_into(sink: list[str]) -> Iterator[None]:
    """Collect what C code writes to file descriptor 2 meanwhile (llama.cpp prints a refused grammar
    there in full: up to megabytes per request), instead of letting it reach the log."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sink.append(capture.read(4 * MAX_GRAMMAR_ERROR).decode("utf-8", errors="replace"))


def grammar_problem(vocab: Any, grammar: str) -> str | None:
    """Why llama.cpp's parser refuses `grammar` (None when it accepts it), in one bounded line."""
    import llama_cpp as ll

    printed: list[str] = []
    with _stderr_into(printed):
        sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        reason = " ".join(printed[0].split())[:MAX_GRAMMAR_ERROR] if printed and printed[0].strip() else ""
        return "llama.cpp could not parse the grammar made from it" + (f" ({reason})" if reason else "")
    ll.llama_sampler_free(sampler)
    return None

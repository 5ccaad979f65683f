"""The baseline every decode-speed ratio is measured against: llama.cpp with nothing of ours around it.

One llama_decode per token and a numpy argmax over the logits (greedy), on a context of its own.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import llama_cpp as ll
import numpy as np

from glm4_local.core.llama import door


class BareDecoder:
    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        self.model = door.load_model(path)
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model.model, params)
        self.n_vocab = ll.llama_vocab_n_tokens(self.model.vocab)

    def decode_tps(self, prompt: list[int], n_tokens: int) -> float:
        """Tokens per second after the first, over `n_tokens` greedy tokens (stop tokens ignored)."""
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        for start in range(0, len(prompt), 512):
            chunk = (ll.llama_token * len(prompt[start : start + 512]))(*prompt[start : start + 512])
            self._decode(chunk)
        first = 0.0
        for i in range(n_tokens):
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            token = (ll.llama_token * 1)(int(logits.argmax()))
            if i == 0:
                first = time.perf_counter()
            if i + 1 < n_tokens:
                self._decode(token)
        return (n_tokens - 1) / (time.perf_counter() - first)

    def _decode(self, tokens: ctypes.Array) -> None:
        if ll.llama_decode(self.ctx, ll.llama_batch_get_one(tokens, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")

    def close(self) -> None:
        ll.llama_free(self.ctx)

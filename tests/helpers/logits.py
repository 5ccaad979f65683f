"""The reference for log-probabilities: llama-cpp-python's own Llama, in this process, reading every
position's logits (not the decoder under test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOLERANCE = 2e-3  # batched and single-sequence float32 sums differ in their last digits


def reference_logprobs(path: Path, tokens: list[int], flash: bool = False) -> np.ndarray:
    """log-softmax over the vocabulary at every position of `tokens`, by llama-cpp-python's own Llama (with
    flash attention or without, as the server compared with runs)."""
    import llama_cpp

    from glm4_local.core.llama.door import llama_defaults_follow_repacking

    llama_defaults_follow_repacking()  # the weights where the decoder under test keeps them
    llm = llama_cpp.Llama(str(path), n_ctx=len(tokens) + 8, logits_all=True, verbose=False, n_threads=2,
                          flash_attn=flash)
    try:
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    shift = logits.max(axis=1, keepdims=True)
    return logits - shift - np.log(np.exp(logits - shift).sum(axis=1, keepdims=True))


def token_ids(path: Path) -> dict[bytes, int]:
    """Each token's bytes (markup as written) → its id, read from the model by llama-cpp-python."""
    import llama_cpp

    from glm4_local.core.llama.door import token_piece

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        return {token_piece(llm, t, special=True): t for t in range(llm.n_vocab())}
    finally:
        llm.close()

"""Log-probabilities as the model gives them: the log-softmax of llama.cpp's logits at one position, before
any sampler (temperature, penalties, a grammar) changes them, so that an evaluation scores the model itself.
One of the modules of core/llama/, the only ones reading llama.cpp's buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20  # alternatives a position may list (OpenAI's limit)


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability where it stands, and the `top` likeliest tokens there, likeliest first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def logprob_at(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under `logits` (one position's), with the `top` likeliest."""
    n_vocab = len(logits)
    shift = float(logits.max())
    # summed in float64: 151,552 float32 terms lose digits an evaluation compares
    log_total = shift + math.log(float(np.exp(logits - shift).sum(dtype=np.float64)))
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        picked = np.argpartition(-logits, min(top, n_vocab) - 1)[:top]
        picked = picked[np.argsort(-logits[picked], kind="stable")]
        best = tuple((int(t), float(logits[t]) - log_total) for t in picked)
    return TokenLogprob(token, float(logits[token]) - log_total, best)


def prompt_logprobs(row: Callable[[int], np.ndarray], start: int, prompt: list[int], first: int, count: int,
                    top: int) -> list[TokenLogprob]:
    """The log-probability of each prompt token that a batch's rows of logits predict: `count` rows from batch
    index `start` hold the logits after prompt positions `first` onwards (the last prompt token predicts none)."""
    return [logprob_at(row(start + i), prompt[first + i + 1], top) for i in range(count) if first + i + 1 < len(prompt)]

"""How far one model's next-token distributions are from another's: the maths `verify` and `eval` share."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (a 151,552-token vocabulary loses digits in float32)."""
    x = logits.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_per_position(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) at each position, from log-probabilities."""
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def top1_matches(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Whether both pick the same most likely token, at each position."""
    return reference.argmax(-1) == candidate.argmax(-1)

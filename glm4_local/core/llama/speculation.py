"""Prompt-lookup speculation: drafts from a sequence's own context, and when to draft at all.

A draft is the run of tokens that followed the latest earlier occurrence of the context's last n tokens
(n from NGRAM_MAX down to NGRAM_MIN: the longest match first). The decoder puts it behind the sequence's
next token in the same `llama_decode` and keeps the longest prefix the model itself would have produced.

Acceptance rule: the target samples every drafted position with the job's own sampler chain, in order,
and a drafted token is kept while it equals the token sampled. That is standard speculative sampling for
a deterministic proposal (q = one-hot on the draft: accept with probability p(draft), else draw from p
without the draft, renormalised) and needs no extra random draw: each emitted token is one draw of the
chain from the same logits as without speculation, so greedy output is identical token for token and a
seeded sampled one draws the same sequence. Grammar, penalties and stops see exactly the tokens emitted.

Auto: a draft length that doubles while drafts are taken whole and falls to what was accepted otherwise;
when the moving average of the share accepted falls below MIN_RATE, no drafting for a pause that doubles
each time (up to MAX_PAUSE tokens), so text that does not repeat itself costs (almost) nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NGRAM_MAX = 4
NGRAM_MIN = 2
DEFAULT_DRAFT_MAX = 16
RATE_WEIGHT = 0.3  # of the latest draft in the moving average of acceptance
MIN_RATE = 0.4  # below it drafting pauses: from the start, three drafts in a row of which nothing was accepted
FIRST_PAUSE = 16  # tokens
MAX_PAUSE = 512


@dataclass(frozen=True)
class SpeculationSettings:
    """`auto`: draft when the context offers a match and drafts keep being accepted; `off`: never."""

    mode: str = "auto"  # "auto" | "off"
    draft_max: int = DEFAULT_DRAFT_MAX

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.draft_max > 0


SPECULATE_MODES = ("auto", "off")


def speculation_of(mode: str, draft_max: int = DEFAULT_DRAFT_MAX) -> SpeculationSettings:
    """Settings from the CLI's words; ValueError names what is allowed."""
    if mode not in SPECULATE_MODES:
        raise ValueError(f"{mode!r}: choose one of {', '.join(SPECULATE_MODES)}")
    if draft_max < 0:
        raise ValueError(f"a draft of {draft_max} tokens: give 0 or more")
    return SpeculationSettings(mode, draft_max)


class Drafter:
    """One job's context (prompt + generated) and its drafting state."""

    def __init__(self, prompt: list[int], settings: SpeculationSettings) -> None:
        self.draft_max = settings.draft_max
        self.length = min(8, self.draft_max)  # the next draft's length, adapted to acceptance
        self._tokens = np.empty(max(64, 2 * len(prompt)), dtype=np.int32)
        self._n = 0
        self.extend(prompt)
        self.rate = 1.0  # the share of drafted tokens accepted, a moving average over drafts
        self.pause = FIRST_PAUSE
        self.paused_until = 0  # a context length: no drafting before it

    def extend(self, tokens: list[int]) -> None:
        end = self._n + len(tokens)
        if end > len(self._tokens):
            grown = np.empty(max(end, 2 * len(self._tokens)), dtype=np.int32)
            grown[: self._n] = self._tokens[: self._n]
            self._tokens = grown
        self._tokens[self._n : end] = tokens
        self._n = end

    def draft(self, room: int) -> list[int]:
        """Up to min(length, room) tokens likely to follow the context; [] when paused or nothing matches."""
        limit = min(self.length, room)
        if limit <= 0 or self._n < self.paused_until:
            return []
        start = self._latest_match(self._tokens[: self._n])
        if start is None:
            return []
        return np.resize(self._tokens[start : self._n], limit).tolist()  # a copy at that offset repeats itself

    @staticmethod
    def _latest_match(history: np.ndarray) -> int | None:
        """Where the tokens after the latest earlier occurrence of the longest suffix (NGRAM_MIN to
        NGRAM_MAX tokens) of `history` begin; None when not even NGRAM_MIN tokens recur."""
        end = len(history) - 1
        found = np.flatnonzero(history[:end] == history[end])  # earlier occurrences of the last token
        best = None
        for back in range(1, NGRAM_MAX):  # ... that the token `back` before the end also precedes
            found = found[found >= back]
            found = found[history[found - back] == history[end - back]]
            if not len(found):
                break
            if back + 1 >= NGRAM_MIN:
                best = int(found[-1])
        return None if best is None else best + 1

    def record(self, drafted: int, accepted: int, min_rate: float = 0.0) -> None:
        """Adapt to how much of a draft of `drafted` tokens was accepted; drafting pauses when the share
        accepted falls below MIN_RATE or `min_rate` (what a drafted token must earn to pay for itself)."""
        if accepted == drafted:
            self.length = min(self.draft_max, max(2 * self.length, 1))
        else:
            self.length = max(1, accepted + 1)
        self.rate = (1 - RATE_WEIGHT) * self.rate + RATE_WEIGHT * accepted / max(drafted, 1)
        if self.rate >= max(MIN_RATE, min_rate):
            if accepted:
                self.pause = FIRST_PAUSE
            return
        self.paused_until = self._n + self.pause
        self.pause = min(2 * self.pause, MAX_PAUSE)
        self.rate = (1 + max(MIN_RATE, min_rate)) / 2  # a fresh, shorter chance after the pause


class StepCosts:
    """What a token costs in a generating step, learnt from the steps themselves: seconds ≈ base +
    per_token × tokens, a least-squares fit that forgets old steps. A drafted token costs `per_token`;
    accepted, it saves a token of a step without drafts (seconds / tokens of that step), so drafting
    pays only while the share accepted exceeds their ratio: on a GPU or for a 9B on a laptop (bound by
    reading the weights) a few percent, on a small CPU model decoding several sequences nearly all."""

    def __init__(self, memory: float = 0.97) -> None:
        self.memory = memory
        self._sums = np.zeros(5)  # weight, n, n², t, n·t

    def observe(self, tokens: int, seconds: float) -> None:
        self._sums = self.memory * self._sums + np.array([1.0, tokens, tokens**2, seconds, tokens * seconds])

    def break_even(self, sequences: int) -> float:
        """The share of drafted tokens that must be accepted for drafts to pay, with `sequences` generating;
        0 until steps of different sizes have been seen."""
        w, n, nn, t, nt = self._sums
        spread = w * nn - n * n
        if w < 4 or spread <= 1e-9 * max(w * nn, 1.0):
            return 0.0
        per_token = (w * nt - n * t) / spread
        base = (t - per_token * n) / w
        plain_token = base / max(sequences, 1) + per_token  # a token of a step without drafts
        return float(min(1.0, max(0.0, per_token / plain_token))) if plain_token > 0 else 0.0

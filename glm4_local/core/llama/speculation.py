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

Auto: a drafted token is worth sending only if it is accepted often enough to pay for its row. The k-th
token of a draft is kept when all before it were, so with p the chance that a matched continuation's next
token is right (estimated from this job's recent drafts, shadows included) it is kept with probability
p^k and then saves the sequence a step; the draft's length is the one with the most expected gain against
what the extra rows add to this step, both from what steps of each size cost here (StepCosts: on 2 cores a
4-sequence step of 5 tokens can cost 70% more than one of 4, on a GPU nearly nothing). A step saved is worth
the whole step to a sequence decoding alone; with several, aggregate speed counts, and a sequence that
ends sooner takes only its row out of the steps the others still take (measured: drafts valued at a
sequence's share of the step cost 4-8 streams 5-10% of their speed on random text).
With none worth sending the continuation is kept as a shadow, scored against the tokens the sequence then
generates at the cost of a lookup, so drafting resumes within a few tokens of a reply starting to quote its
document, and text that does not repeat costs nothing. A job starts from what its decoder's recent drafts earned.
Drafts are sent when that estimate is high, which on text repeating now and then is as often luck as a pattern:
what drafts kept against what their estimate promised (Promises, decoder-wide) scales what a kept token is
worth, so such text stops paying for its drafts while a copied passage, which keeps its promise, drafts as before.
Shadows keep or break their promise too: scored on sent drafts alone, a few early misses held the factor down for
good (no draft was sent to raise it again), and replies that later copied their own lines drafted no more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NGRAM_MAX = 4
NGRAM_MIN = 2
NGRAM_SIZES = tuple(range(NGRAM_MAX, NGRAM_MIN - 1, -1))  # the longest match first
DEFAULT_DRAFT_MAX = 16
MEMORY = 0.9  # per drafted token scored: a job's estimate follows its last ~10 (a new reply can change fast)
SHARED_MEMORY = 0.98  # the decoder-wide estimate follows its last ~50
PRIOR = 4.0  # drafted tokens' worth of the decoder-wide estimate a new job starts from
MIN_WORTH = 0.1  # a drafted token kept less often than this is never sent, whatever the step costs say
PROMISE_MEMORY = 0.9  # per draft scored (sent or shadow): what drafts keep against their promise follows the last ~10
PROMISE_PRIOR = 4.0  # tokens' worth of promises kept to the letter a decoder starts from
# never trusted less than half (drafts of a copied passage still go out, and win it back), nor more than the estimate
# says: shadows weighed at a low estimate keep far more than it promised, which drafts at a high one cannot
PROMISE_RANGE = (0.5, 1.0)


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


class Acceptance:
    """How often the next token of a matched continuation was right: accepted tokens (hits) against drafts
    that ended in a rejected token (misses), sums that forget old tokens at `memory` per token scored."""

    def __init__(self, hits: float = 3.0, misses: float = 1.0, memory: float = SHARED_MEMORY) -> None:
        self.hits, self.misses, self.memory = hits, misses, memory

    @property
    def p(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses > 0 else 1.0

    def score(self, accepted: int, missed: bool) -> None:
        for _ in range(accepted):
            self.hits = self.memory * self.hits + 1.0
            self.misses *= self.memory
        if missed:
            self.hits *= self.memory
            self.misses = self.memory * self.misses + 1.0

    def worth(self, limit: int, saved: float, extra_cost: Callable[[int], float]) -> int:
        """The draft length (0 to `limit`) with the most expected gain: its k-th token is kept with
        probability p^k and then saves `saved` seconds; k drafted tokens add extra_cost(k) to the step.
        Never a token kept less often than MIN_WORTH."""
        best, best_gain, kept, gained = 0, 0.0, 1.0, 0.0
        for k in range(1, limit + 1):
            kept *= self.p
            if kept < MIN_WORTH:
                break
            gained += kept * saved
            gain = gained - extra_cost(k)
            if gain > best_gain:
                best, best_gain = k, gain
        return best


class Promises:
    """What drafts (sent or shadows) kept against what their estimate promised (the sum of p^k over their tokens),
    decoder-wide.

    A draft is sent when a job's estimate is high, and an estimate over its last ~10 tokens is high as often by
    luck as by a text that repeats: chosen at its peaks it promises more than the text then keeps (2 cores,
    12 × 1024, one reply of 128 tokens to a story prompt: 25 tokens kept of 36 promised, and the drafts cost
    the reply 2-3% against none). `factor` scales what a kept token is worth by what promises kept lately;
    on a passage being copied drafts keep what they promise and the factor stays near 1."""

    def __init__(self, promised: float = PROMISE_PRIOR, kept: float = PROMISE_PRIOR,
                 memory: float = PROMISE_MEMORY) -> None:
        self.promised, self.kept, self.memory = promised, kept, memory

    @property
    def factor(self) -> float:
        low, high = PROMISE_RANGE
        return min(high, max(low, self.kept / self.promised)) if self.promised > 0 else 1.0

    def score(self, promised: float, kept: int) -> None:
        self.promised = self.memory * self.promised + promised
        self.kept = self.memory * self.kept + kept


class Drafter:
    """One job's context (prompt + generated) and its drafting state."""

    def __init__(self, prompt: list[int], settings: SpeculationSettings, shared: Acceptance | None = None,
                 promises: Promises | None = None) -> None:
        self.draft_max = settings.draft_max
        self._shared = shared or Acceptance()
        self._promises = promises or Promises()
        self._weighed_p = 1.0  # the estimate the latest draft (sent or shadow) was weighed with
        prior = self._shared.p
        self.acceptance = Acceptance(PRIOR * prior, PRIOR * (1 - prior), MEMORY)
        self.shadow: list[int] = []  # a draft not sent, scored against the tokens that follow
        self._shadow_hits = 0
        self._tokens: list[int] = []
        # per n-gram size (NGRAM_MAX down to NGRAM_MIN): n tokens → where their latest occurrence ends, for the
        # n-grams ending before the last token (a lookup then finds only earlier occurrences): ~2 µs a token at
        # any length, where a scan of the context cost ~10 µs at 150 tokens and grew with it; ~400 bytes a
        # token of context (1% of GLM-4-9B's f16 KV cache)
        self._latest: list[dict[tuple[int, ...], int]] = [{} for _ in NGRAM_SIZES]
        self._unindexed = 0  # the first n-gram end not yet indexed: indexing waits for a draft to need it
        self.extend(prompt)

    def extend(self, tokens: list[int]) -> None:
        self._tokens += tokens
        for token in tokens:
            if not self.shadow:
                break
            hit = token == self.shadow[self._shadow_hits]
            self._shadow_hits += hit
            if hit and self._shadow_hits < len(self.shadow):
                continue
            self._keep_promise(len(self.shadow), self._shadow_hits)  # what sending it would have earned
            self.record(len(self.shadow), self._shadow_hits)
            self.shadow, self._shadow_hits = [], 0

    def _index(self) -> None:
        """Enter the n-grams not yet entered, up to the one ending before the last token: each generated token
        while one reply drafts, all since at once when it drafts again (while several replies generate in
        buffers of their own none drafts)."""
        tokens, first, last = self._tokens, self._unindexed, len(self._tokens) - 2
        self._unindexed = max(last + 1, first)
        for n, latest in zip(NGRAM_SIZES, self._latest, strict=True):  # later occurrences overwrite earlier ones
            start = max(first, n - 1)
            if last - start < 8:  # a generated token or a few (1 µs each)
                for end in range(start, last + 1):
                    latest[tuple(tokens[end - n + 1 : end + 1])] = end
            else:  # a prompt: zipped shifted copies (a 16K-token document in 9 ms)
                grams = zip(*(tokens[start - n + 1 + i : last + 2 - n + i] for i in range(n)), strict=True)
                latest.update(zip(grams, range(start, last + 1), strict=True))

    def draft(self, room: int, saved: float = 1.0, extra_cost: Callable[[int], float] = lambda k: 0.0) -> list[int]:
        """The tokens likely to follow the context worth sending (see the module's doc; never more than
        `room` or draft_max); [] when nothing matches or none is worth it, and then the continuation
        becomes the shadow, if none is being scored."""
        limit = min(self.draft_max, room)
        if limit <= 0 or self.shadow:
            return []
        self._index()
        start = self._latest_match()
        if start is None:
            return []
        follows = self._tokens[start:]
        continuation = (follows * (limit // len(follows) + 1))[:limit]  # a copy at that offset repeats
        worth = self.acceptance.worth(limit, saved * self._promises.factor, extra_cost)
        self._weighed_p = self.acceptance.p
        if worth:
            return continuation[:worth]
        self.shadow = continuation
        return []

    def _latest_match(self) -> int | None:
        """Where the tokens after the latest earlier occurrence of the longest suffix (NGRAM_MAX down to
        NGRAM_MIN tokens) of the context begin; None when not even NGRAM_MIN tokens recur."""
        tokens = self._tokens
        for n, latest in zip(NGRAM_SIZES, self._latest, strict=True):
            end = latest.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if end is not None:
                return end + 1
        return None

    def settle(self, drafted: int, accepted: int) -> None:
        """Score a draft sent (`drafted` tokens of it, after any cut): as any draft, and what it kept against
        what its estimate promised."""
        self._keep_promise(drafted, accepted)
        self.record(drafted, accepted)

    def _keep_promise(self, drafted: int, accepted: int) -> None:
        p = self._weighed_p
        self._promises.score(sum(p**k for k in range(1, drafted + 1)), accepted)

    def record(self, drafted: int, accepted: int) -> None:
        """Score a draft (sent or shadow) of which the first `accepted` of `drafted` tokens were right."""
        missed = accepted < drafted
        self.acceptance.score(accepted, missed)
        self._shared.score(accepted, missed)


class StepCosts:
    """What a generating step of n tokens costs here, learnt from the steps themselves: a moving average per
    size, and for sizes not seen yet a least-squares line (seconds ≈ base + per token × n) through the recent
    steps. A line alone misleads: matrix kernels change with the batch (2 cores, 12 × 1024 q8_0: 4 tokens
    57 ms, 5 tokens 96 ms, 8 tokens 78 ms), and a draft that tips the step over such a step costs its all."""

    def __init__(self, memory: float = 0.9, line_memory: float = 0.97) -> None:
        self.memory, self.line_memory = memory, line_memory
        self._mean: dict[int, float] = {}
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0)  # of the line: weight, n, n², t, n·t
        self._line: tuple[float, float] | None = None  # base, per token

    def observe(self, tokens: int, seconds: float) -> None:
        old = self._mean.get(tokens)
        self._mean[tokens] = seconds if old is None else self.memory * old + (1 - self.memory) * seconds
        keep = self.line_memory
        w, n, nn, t, nt = self._sums
        w, n, nn = keep * w + 1, keep * n + tokens, keep * nn + tokens**2
        t, nt = keep * t + seconds, keep * nt + tokens * seconds
        self._sums = (w, n, nn, t, nt)
        spread = w * nn - n * n
        if w >= 4 and spread > 1e-9 * max(w * nn, 1.0):
            per_token = (w * nt - n * t) / spread
            self._line = ((t - per_token * n) / w, per_token)

    @property
    def sizes(self) -> set[int]:
        """The step sizes seen."""
        return set(self._mean)

    def cost(self, tokens: int) -> float | None:
        """Seconds a step of `tokens` tokens takes; None until a step of that size or a line is known."""
        known = self._mean.get(tokens)
        if known is not None:
            return known
        return None if self._line is None else self._line[0] + self._line[1] * tokens

    def extra(self, tokens: int, more: int) -> float:
        """What `more` tokens add to a step of `tokens`; 0 while either size is unknown."""
        before, after = self.cost(tokens), self.cost(tokens + more)
        return 0.0 if before is None or after is None else max(0.0, after - before)

    def saved(self, sequences: int) -> float:
        """What a generating sequence's accepted drafted token saves: to a sequence decoding alone the step
        it no longer needs; with several, only what its row adds to a step (the others do not end sooner,
        and a request waiting for its slot would be read the sooner only while the queue lasts). 1 while
        unknown (then only the extra cost's 0 matters: drafts are tried)."""
        plain = self.cost(sequences)
        if plain is None or sequences <= 0:
            return 1.0
        fewer = self.cost(sequences - 1) if sequences > 1 else 0.0
        return max(0.0, plain - fewer) if fewer is not None else plain / sequences

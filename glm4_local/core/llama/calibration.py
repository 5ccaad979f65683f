"""What generating steps of each size cost here, measured while a decoder is idle, before any draft is weighed.

Speculation sends a draft when what its tokens are expected to save outweighs what they add to the step
(core/llama/speculation.py, StepCosts). A step size never seen was counted as free, so a new server's first
drafts went out on the acceptance estimate alone: at the prior (0.75) 8 tokens behind the one, where on 2 cores
(12 × 1024 q8_0) a step of 2 tokens costs 1.7 times one, and of 3 tokens 2.8 times; at one stream a fresh
server's first replies were 2.7% slower for it. Every size a draft can make is measured once, as llama-server's
warm-up measures one, while the decoder is idle (the server's worker thread when no request runs, the terminal
chat while the user writes), on an idle slot's sequence past its cache; a request arriving (or the message
being sent) stops the step inside llama.cpp, and the size is measured again when the decoder is next idle.

One of the modules of core/llama/, the only ones touching llama_cpp's structures.
"""

from __future__ import annotations

from typing import Any

from glm4_local.core.llama.speculation import SpeculationSettings, StepCosts

TRIAL_TOKEN = 0  # what a trial step's rows hold: their keys and values are removed after it, their logits unread


class Calibration:
    """The step sizes still to be measured, smallest first, and where their times go."""

    def __init__(self, largest: int) -> None:
        # a first step of one token, not kept: it may read the weights from disk into the page cache
        self._sizes = [1, *range(1, largest + 1)] if largest > 0 else []
        self._warm = False

    @classmethod
    def of_drafts(cls, speculation: SpeculationSettings, slots: int, kv_unified: bool, n_batch: int) -> Calibration:
        """Every step size a draft can make: behind one generating token, or (in one KV buffer for all) behind
        each slot's; none without drafts."""
        if not speculation.enabled:
            return cls(0)
        return cls(min(speculation.draft_max + (slots if kv_unified else 1), n_batch))

    @property
    def next_size(self) -> int | None:
        return self._sizes[0] if self._sizes else None

    def abandon(self) -> None:
        """Measure nothing more (the sizes left are learnt from the steps themselves)."""
        self._sizes.clear()

    def measured(self, seconds: float, costs: StepCosts) -> None:
        """The step of `next_size` tokens took `seconds` (whole: not stopped by a request)."""
        size = self._sizes.pop(0)
        if self._warm:
            costs.observe(size, seconds)
        self._warm = True


def write_trial(batch: Any, seq: int, position: int, size: int) -> None:
    """A step of `size` rows of sequence `seq` from `position`, each giving logits as a generating step's
    drafted rows do (a llama_batch)."""
    for i in range(size):
        batch.token[i] = TRIAL_TOKEN
        batch.pos[i] = position + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = True
    batch.n_tokens = size

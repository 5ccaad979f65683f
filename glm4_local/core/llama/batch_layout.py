"""How one step's tokens are laid out in the llama_batch: every sequence's tokens together, sequences in
order of their ids, and (with a KV buffer per sequence) a filler token for each idle sequence between
the first and last one in the step.

Why: with a buffer per sequence llama.cpp splits a batch into compute passes of consecutive sequence ids,
each sequence with the same number of tokens (`split_equal`, sequential). Steps of sequences 0, 2 and 3
would be two passes (0; 2 and 3), each reading all the weights again; a filler token for idle sequence 1
(a row of the batch, its one cell removed after the step) makes it one. Laid out by id, a prompt being
read joins the generating sequences' pass with its first token. With one shared buffer the order does not
matter to llama.cpp and no filler is needed.

One of the modules of core/llama/, the only ones touching llama_cpp's structures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glm4_local.core.llama.jobs import Slot

FILLER_TOKEN = 0  # what a filler row holds: its keys and values are removed after the step, its logits unread


@dataclass(eq=False)
class Planned:
    """What one busy slot puts into a step: `take` of its pending tokens, then its `draft`; `samples`: the
    step ends its pending tokens, so the last of them (and each draft token) gives logits; `scored`: every
    token gives logits (a job scoring its prompt)."""

    slot: Slot
    take: int
    draft: list[int] = field(default_factory=list)
    samples: bool = False
    scored: bool = False


@dataclass(eq=False)
class Placed:
    """Where a planned slot landed: its tokens from batch index `start`; `output`: the batch index of the
    first logits it samples from (None while a prompt is still being read)."""

    slot: Slot
    start: int
    tokens: int
    output: int | None
    draft: list[int] = field(default_factory=list)


def fillers(planned: list[Planned], slots: list[Slot], slot_ctx: int, room: int) -> list[Slot]:
    """The slots between the lowest and highest sequence of the step that have no token in it: given a filler
    token each, the step is one compute pass. None when the batch has no `room` for them all or one has no
    free cell (a gap left open splits the pass anyway)."""
    present = {p.slot.seq for p in planned}
    if len(present) < 2:
        return []
    low, high = min(present), max(present)
    gaps = [s for s in slots if low < s.seq < high and s.seq not in present]
    return [] if len(gaps) > room or any(len(s.cached) >= slot_ctx for s in gaps) else gaps


def lay_out(batch: Any, planned: list[Planned], filler_slots: list[Slot]) -> list[Placed]:
    """Write the step into `batch` (a llama_batch), sequences in order of their ids; what each planned slot
    got. Filler rows sit at their sequence's next position and give no logits."""
    rows: list[tuple[int, Planned | Slot]] = [(p.slot.seq, p) for p in planned]
    rows += [(slot.seq, slot) for slot in filler_slots]
    rows.sort(key=lambda row: row[0])
    placed, n = [], 0
    for seq, item in rows:
        if isinstance(item, Slot):
            _write(batch, n, FILLER_TOKEN, len(item.cached), seq, False)
            n += 1
            continue
        slot, tokens = item.slot, item.slot.pending[: item.take] + item.draft
        output = n + item.take - 1 if item.samples else None
        position = len(slot.cached)
        for i, token in enumerate(tokens):
            _write(batch, n + i, token, position + i, seq, item.scored or (output is not None and n + i >= output))
        placed.append(Placed(slot, n, item.take, output, item.draft))
        n += len(tokens)
    batch.n_tokens = n
    return placed


def _write(batch: Any, index: int, token: int, position: int, seq: int, logits: bool) -> None:
    batch.token[index] = token
    batch.pos[index] = position
    batch.n_seq_id[index] = 1
    batch.seq_id[index][0] = seq
    batch.logits[index] = logits

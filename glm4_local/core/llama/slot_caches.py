"""What the decoder's slots hold and where a new job's prompt comes from without reading it again.

A job goes to the free slot whose cache shares the longest prefix with its prompt (a conversation's next turn),
then takes the longest prefix to be had elsewhere when that beats it: another slot's (users with the same system
prompt and tools) or the disk prompt cache's (core/llama/prompt_cache.py). What a slot has read is saved to the
disk in turn. With a KV buffer per slot llama.cpp copies a prefix between buffers only at the start of the next
`llama_decode`, so until then the buffers a copy reads or writes are neither restored into nor saved from.
"""

from __future__ import annotations

from typing import Any

from glm4_local.core.llama.jobs import Slot, common_prefix
from glm4_local.core.llama.prompt_cache import MIN_GAIN_TOKENS, MIN_SAVED_TOKENS, PromptDiskCache, read_state

SHARE_MIN_TOKENS = 32  # a prefix another slot holds is shared with a new job from this many tokens more on


class SlotCaches:
    """The slots' KV caches in one llama.cpp context: one buffer they share (`kv_unified`) or a buffer each."""

    def __init__(self, ll: Any, ctx: Any, memory: Any, slots: list[Slot], kv_unified: bool,
                 disk: PromptDiskCache | None) -> None:
        self._ll, self._ctx, self._memory = ll, ctx, memory
        self._slots, self.kv_unified, self.disk = slots, kv_unified, disk
        self.copying: set[int] = set()  # sequences whose buffers a queued copy reads or writes (see _copy_prefix)

    @staticmethod
    def choose(free: list[Slot], prompt: list[int]) -> Slot:
        """The free slot whose cache shares the longest prefix with the prompt, if that reuses at least half of
        what the slot holds (a conversation's next turn) or the whole prompt where no copy would bring it to
        another slot (the same short request again: a retry, a regenerated reply, which replaces the old one);
        else the least recently used one, so that a new conversation which merely shares a system prompt does
        not evict a live one."""
        shared = {id(s): common_prefix(s.cached, prompt) for s in free}
        best = max(free, key=lambda s: (shared[id(s)], -s.used_at))
        if shared[id(best)] * 2 >= len(best.cached) > 0:
            return best
        oldest = min(free, key=lambda s: s.used_at)
        # four short requests sent again read 1, 3, 3 and 3 tokens from the oldest slots, and llama.cpp computes
        # unequal counts in buffers of their own in passes of equal ones: two passes where one does
        usable = len(prompt) - 1  # the last token is read for its logits whatever the cache holds
        if shared[id(best)] >= usable and not _copy_pays(usable, min(shared[id(oldest)], usable)):
            return best
        return oldest

    def keep(self, slot: Slot, tokens: int) -> None:
        """The slot keeps the first `tokens` of its cache and drops the rest."""
        self._ll.llama_memory_seq_rm(self._memory, slot.seq, tokens, -1)
        del slot.cached[tokens:]
        slot.on_disk = min(slot.on_disk, tokens)

    def take_prefix(self, slot: Slot, prompt: list[int], keep: int) -> int:
        """Give the slot the longest prefix of the prompt to be had without reading it, another slot's or the
        disk's, when that beats the `keep` tokens it holds; the tokens it holds then."""
        donor, shared = self._donor(slot, prompt)
        if not _copy_pays(shared, keep):
            donor, shared = None, keep
        # a buffer with a copy pending is neither written nor read until the next decode applies the copy
        if self.disk is not None and len(prompt) - 1 - shared >= MIN_GAIN_TOKENS and slot.seq not in self.copying:
            restored = self.disk.restore(self._ll, self._ctx, self._memory, slot.seq, prompt, shared,
                                         *self._stream(slot))
            if restored is not None:  # [] when llama.cpp refused the entry and the slot was emptied
                slot.cached, slot.on_disk = restored, len(restored)
                if restored or donor is None:
                    return len(restored)
        return self._copy_prefix(slot, donor, shared) if donor is not None else keep

    def _donor(self, slot: Slot, prompt: list[int]) -> tuple[Slot | None, int]:
        """The other slot holding the longest prefix of the prompt, and how many tokens of it (not the last
        one, which gives logits)."""
        limit, donor, count = len(prompt) - 1, None, 0
        for other in self._slots:
            shared = min(common_prefix(other.cached, prompt), limit) if other is not slot else 0
            if shared > count:
                donor, count = other, shared
        return donor, count

    def _copy_prefix(self, slot: Slot, donor: Slot, count: int) -> int:
        """The donor's first `count` tokens as the slot's. In the one buffer all slots share, a copy only marks
        the cells as the slot's too: nothing is read again, nothing duplicated. Between buffers of their own,
        llama.cpp copies the whole buffer at the start of the next llama_decode (no call applies it sooner),
        and the slot keeps the prefix's part."""
        ll = self._ll
        ll.llama_memory_seq_rm(self._memory, slot.seq, 0, -1)
        if self.kv_unified:
            ll.llama_memory_seq_cp(self._memory, donor.seq, slot.seq, 0, count)
        else:
            ll.llama_memory_seq_cp(self._memory, donor.seq, slot.seq, -1, -1)
            ll.llama_memory_seq_rm(self._memory, slot.seq, count, -1)
            self.copying.update((donor.seq, slot.seq))
        slot.cached, slot.on_disk = donor.cached[:count], 0
        return count

    def copies_applied(self) -> None:
        """A llama_decode has run: llama.cpp applied the queued copies between buffers before computing."""
        self.copying.clear()

    def save(self, slot: Slot) -> None:
        """Keep what the slot holds on disk once it has read MIN_SAVED_TOKENS more than the disk has: a
        long prompt read once is saved, and a long conversation every few thousand tokens (not every
        turn: an entry of a 9B model's 32K tokens is over a GiB)."""
        if self.disk is None or len(slot.cached) - slot.on_disk < MIN_SAVED_TOKENS or slot.seq in self.copying:
            return
        state = read_state(self._ll, self._ctx, slot.seq, *self._stream(slot))
        if state is not None:
            self.disk.save(list(slot.cached), state)
            slot.on_disk = len(slot.cached)

    def _stream(self, slot: Slot) -> tuple[int, int]:
        """(KV buffers in the context, the slot's one): one shared, or a buffer each, numbered as the slots."""
        return (1, 0) if self.kv_unified else (len(self._slots), slot.seq)


def _copy_pays(shared: int, kept: int) -> bool:
    """Whether a slot keeping `kept` tokens of a prompt should take `shared` of them from another slot instead."""
    return shared >= kept + SHARE_MIN_TOKENS

"""Continuous batching on llama.cpp: many sequences decoded together, each sampled by llama.cpp's sampler chain.

One context holds `slots` sequences, each with up to `slot_ctx` tokens in a KV buffer of its own (or, asked for,
one buffer they share). Every `step()` is one `llama_decode` whose batch carries the next token of every
sequence that is generating, then chunks of prompts waiting to be evaluated (laid out as core/llama/
batch_layout.py says); each sequence is then sampled by its own C sampler chain. Behind
a generating sequence's token the batch may carry a prompt-lookup draft (core/llama/speculation.py):
the tokens the model confirms are kept, the rest leave the KV cache before the step ends; what a draft adds to
a step is known from steps of each size measured while the decoder is idle (`calibrate()`,
core/llama/calibration.py). Which slot a
job goes to, and the prefix of its prompt it takes from another slot or the disk instead of reading it, is
core/llama/slot_caches.py's: a conversation's next turn evaluates only its new tokens. The chat (one slot,
stepped by its own thread) and the server (many slots, stepped by a worker thread) both run this loop.

One of the modules of core/llama/, the only ones importing llama_cpp.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any

import gguf

from glm4_local.core.llama.batch_layout import Placed, Planned, fillers, lay_out
from glm4_local.core.llama.calibration import Calibration, write_trial
from glm4_local.core.llama.device import ContextSettings
from glm4_local.core.llama.jobs import DecodeAborted, Job, Slot, common_prefix
from glm4_local.core.llama.logprobs import logprob_at, prompt_logprobs
from glm4_local.core.llama.prompt_cache import PromptDiskCache
from glm4_local.core.llama.sampling import DecodeError, LogitRows, Sampler
from glm4_local.core.llama.slot_caches import SlotCaches
from glm4_local.core.llama.speculation import Acceptance, Drafter, Promises, SpeculationSettings, StepCosts

__all__ = ["DecodeAborted", "Decoder", "Job"]

ECHO_CHUNK = 256  # prompt tokens a batch reads of a job scoring its prompt: each keeps a row of logits (the
# vocabulary's floats, 0.6 MB for GLM-4), so a 2,048-token batch would hold 1.2 GB of them


class Decoder:
    """A llama.cpp context with `slots` sequences of `slot_ctx` tokens each, decoded together."""

    def __init__(self, model: Any, slots: int, slot_ctx: int, settings: ContextSettings,
                 flash_attn: bool = False, type_k: gguf.GGMLQuantizationType | None = None,
                 type_v: gguf.GGMLQuantizationType | None = None, disk: PromptDiskCache | None = None,
                 speculation: SpeculationSettings | None = None) -> None:
        import llama_cpp as ll

        self._ll = ll
        self.disk = disk  # long prompts read once are kept there, and loaded instead of read again
        self.model = model  # keeps the llama_model alive as long as the context
        self.speculation = speculation or SpeculationSettings()
        # with one buffer for all sequences, jobs are held to `slot_ctx` tokens each, so the slots' caches
        # together never outgrow it
        self.kv_unified = settings.kv_unified
        params = settings.params(ll, slots, slot_ctx, flash_attn, type_k, type_v)
        self.ctx = ll.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise DecodeError(f"llama.cpp could not make a context of {slots} × {slot_ctx} tokens "
                              "(not enough memory?)")
        self.memory = ll.llama_get_memory(self.ctx)
        self.slot_ctx = min(slot_ctx, int(ll.llama_n_ctx(self.ctx)) // slots)
        self.n_batch = int(params.n_batch)
        self.batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self.vocab = model.vocab
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.logit_rows = LogitRows(self.n_vocab)
        self._slots = [Slot(i) for i in range(slots)]
        self.caches = SlotCaches(ll, self.ctx, self.memory, self._slots, self.kv_unified, disk)
        self._waiting: collections.deque[Job] = collections.deque()
        self.decode_calls = 0  # llama_decode calls, and the tokens they carried (for /metrics)
        self.decoded_tokens = 0
        self.decode_seconds = 0.0
        self.drafted_tokens = 0  # speculation: tokens proposed by prompt lookup, and of those, accepted
        self.accepted_tokens = 0
        self.step_costs = StepCosts()  # what a drafted token costs here, against what an accepted one saves
        self.acceptance = Acceptance()  # what drafts earned lately, where a new job's drafting starts
        self.promises = Promises()  # what drafts (sent or shadows) kept against their estimates' promise
        self.calibration = Calibration.of_drafts(self.speculation, slots, self.kv_unified, self.n_batch)
        self._calibrating = self._calibration_held = False  # a measuring step is under way; measuring is held
        self._changed = False
        self._lock = threading.Lock()  # guards `waiting` and `cancelled` flags against other threads
        self._abort = threading.Event()  # set from another thread: the llama_decode under way stops
        self._abort_callback = ll.ggml_abort_callback(lambda _: self._abort.is_set())  # kept referenced

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; it starts at the next step with a free slot. Checks it fits a slot first."""
        if not job.prompt:
            raise DecodeError("an empty prompt")
        if len(job.prompt) >= self.slot_ctx:
            raise DecodeError(f"a prompt of {len(job.prompt)} tokens does not fit the context of {self.slot_ctx}")
        with self._lock:
            self._waiting.append(job)
            self._changed = True
            if self._calibrating:  # an idle step measuring costs: the job goes first
                self._abort.set()

    def cancel(self, job: Job) -> None:
        """Stop a job (from any thread); its slot is freed at the next step or release_cancelled()."""
        with self._lock:
            job.cancelled = True
            self._changed = True

    @property
    def slot_count(self) -> int:
        return len(self._slots)

    @property
    def active(self) -> int:
        """Slots running a job."""
        return sum(1 for s in self._slots if s.job is not None)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._waiting) or self.active > 0

    def release_cancelled(self) -> None:
        """Free the slots of cancelled jobs and drop cancelled jobs still waiting (stepping thread only)."""
        with self._lock:
            for job in [j for j in self._waiting if j.cancelled]:
                self._waiting.remove(job)
                self._end(job, "cancelled")
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "cancelled")

    def cancel_all(self) -> None:
        """Cancel every running and waiting job and free their slots (stepping thread only)."""
        with self._lock:
            jobs = [s.job for s in self._slots if s.job is not None] + list(self._waiting)
        for job in jobs:
            self.cancel(job)
        self.release_cancelled()

    def forget(self) -> None:
        """Empty every idle slot's cache (the next prompt is evaluated whole)."""
        for slot in self._slots:
            if slot.job is None:
                self._ll.llama_memory_seq_rm(self.memory, slot.seq, 0, -1)
                slot.cached.clear()

    # -- the loop ----------------------------------------------------------------------------------
    def prepare(self) -> bool:
        """Start waiting jobs and free cancelled ones (step() does it first); whether any job is reading
        its prompt, i.e. whether the next step is a prompt batch (seconds on a CPU) rather than a token."""
        if self._changed:  # a job came, went or was cancelled: otherwise the slots are as they were
            self._changed = False
            self.release_cancelled()
            self._start_waiting()
        return any(s.job is not None and len(s.pending) > 1 for s in self._slots)

    def step(self, abortable: bool = False) -> bool:
        """One llama_decode over every active sequence; False when there was nothing to do. `abortable`:
        request_abort() from another thread stops the decode inside llama.cpp (DecodeAborted)."""
        self.prepare()
        added, filler_slots = self._fill_batch()
        if not added:
            return False
        status, seconds = self._decode(abortable)
        for slot in filler_slots:  # a filler's cell was only there to keep the step one pass
            self._ll.llama_memory_seq_rm(self.memory, slot.seq, len(slot.cached), -1)
        if status >= 0:
            self.caches.copies_applied()
        self.decode_seconds += seconds
        self.decode_calls += 1
        if all(entry.tokens == 1 and entry.output is not None for entry in added):
            # a generating step, every row's logits computed (as a draft's are): what drafts are weighed by; a
            # prompt's tokens cost far less (one row of logits), so steps reading one are not counted
            self.step_costs.observe(self.batch.n_tokens, seconds)
        self.decoded_tokens += self.batch.n_tokens - len(filler_slots)
        if status == 2 and self._abort.is_set():
            self._abort.clear()
            for entry in added:  # what the aborted batch left in the cache is not the slot's
                self._ll.llama_memory_seq_rm(self.memory, entry.slot.seq, len(entry.slot.cached), -1)
            raise DecodeAborted("stopped while reading the prompt")
        if status != 0:
            self._fail([entry.slot for entry in added], f"llama.cpp could not evaluate the batch (code {status})")
            return True
        now = time.perf_counter()
        for entry in added:
            slot = entry.slot
            if slot.job is not None and slot.job.echo_logprobs:  # the prompt tokens after each one read
                slot.job.prompt_logprobs += prompt_logprobs(lambda row: self.logit_rows.at(self.ctx, row), entry.start,
                                                            slot.job.prompt, len(slot.cached), entry.tokens,
                                                            slot.job.top_logprobs or 0)
            slot.cached += slot.pending[: entry.tokens]
            del slot.pending[: entry.tokens]
            if slot.job is not None and not slot.job.first_token_at:
                slot.job.prompt_done += entry.tokens
            if entry.output is not None:
                self._sample(entry, now)
        return True

    def _decode(self, abortable: bool) -> tuple[int, float]:
        """llama_decode of the batch: its status, and the seconds it took."""
        started = time.perf_counter()
        if abortable:
            self._ll.llama_set_abort_callback(self.ctx, self._abort_callback, None)
        try:
            status = self._ll.llama_decode(self.ctx, self.batch)
        finally:
            if abortable:  # only while asked: the callback costs a Python call per graph node
                self._ll.llama_set_abort_callback(self.ctx, self._ll.ggml_abort_callback(), None)
        return status, time.perf_counter() - started

    def request_abort(self) -> None:
        """Stop the abortable llama_decode under way (from another thread)."""
        self._abort.set()

    def calibrate(self) -> bool:
        """While no job runs or waits (the server's idle worker thread): one step of the next size that drafts
        can make whose cost is not measured yet (core/llama/calibration.py); False when none is left or the step
        did not end whole. A job submitted meanwhile stops it inside llama.cpp."""
        size = self.calibration.next_size
        if size is None or self.has_work():
            return False
        free = [s for s in self._slots if s.job is None and self.slot_ctx - len(s.cached) >= size]
        if not free:
            return False
        with self._lock:
            if self._waiting or self._calibration_held:
                return False
            self._calibrating = True
        slot = free[0]
        write_trial(self.batch, slot.seq, len(slot.cached), size)
        status, seconds = self._decode(abortable=True)
        with self._lock:
            self._calibrating = False
            stopped = self._abort.is_set()
            self._abort.clear()
        self._ll.llama_memory_seq_rm(self.memory, slot.seq, len(slot.cached), -1)
        if status >= 0:
            self.caches.copies_applied()
        if status != 0 and not stopped:  # llama.cpp refused it: not tried again at every idle moment
            self.calibration.abandon()
        if status != 0 or stopped:
            return False
        self.calibration.measured(seconds, self.step_costs)
        return True

    def hold_calibration(self, held: bool) -> None:
        """While held (from any thread), calibrate() measures nothing and a measuring step under way stops."""
        with self._lock:
            self._calibration_held = held
            if held and self._calibrating:
                self._abort.set()

    def reading(self) -> list[tuple[int, int]]:
        """(prompt tokens computed, to compute) of each job still reading its prompt (for /health)."""
        return [(s.job.prompt_done, s.job.evaluated_tokens) for s in self._slots
                if s.job is not None and not s.job.first_token_at]

    def _start_waiting(self) -> None:
        while True:
            free = [s for s in self._slots if s.job is None]
            with self._lock:
                if not free or not self._waiting:
                    return
                # a reply someone watches first (an app's background requests, titles and tags, wait), else in turn
                job = next((j for j in self._waiting if j.watched), self._waiting[0])
                self._waiting.remove(job)
            self._assign(job, free)

    def _assign(self, job: Job, free: list[Slot]) -> None:
        slot = self.caches.choose(free, job.prompt)
        keep = min(common_prefix(slot.cached, job.prompt), len(job.prompt) - 1)  # the last one gives logits
        if job.echo_logprobs:
            keep = 0  # every prompt token is scored, so every one is read
        self.caches.keep(slot, keep)
        if not job.echo_logprobs:
            keep = self.caches.take_prefix(slot, job.prompt, keep)
        try:
            slot.sampler = Sampler(self.vocab, self.n_vocab, job.sampling, self.logit_rows)
        except Exception as e:  # a value llama.cpp refuses must end this job, never the loop
            job.error = str(e) or type(e).__name__
            self._end(job, "error")
            return
        slot.job, slot.pending = job, job.prompt[keep:]
        enabled = self.speculation.enabled
        slot.drafter = Drafter(job.prompt, self.speculation, self.acceptance, self.promises) if enabled else None
        slot.used_at = job.started_at = time.perf_counter()
        job.evaluated_tokens = len(slot.pending)
        limit = self.slot_ctx - len(job.prompt)
        job.max_new_tokens = min(job.max_new_tokens, limit) if job.max_new_tokens > 0 else limit

    def _fill_batch(self) -> tuple[list[Placed], list[Slot]]:
        """What each busy slot puts into the batch (generating slots first, each its next token and a draft
        behind it, then chunks of prompts being read), laid out by sequence; and the filler rows' slots."""
        budget, n = self.n_batch, 0
        planned: list[Planned] = []
        busy = sorted((s for s in self._slots if s.job is not None and s.pending),
                      key=lambda s: (len(s.pending) > 1, s.job.started_at))  # type: ignore[union-attr]
        generating = sum(len(slot.pending) == 1 for slot in busy)
        saved = self.step_costs.saved(generating) if self.speculation.enabled else 0.0
        if not (self.kv_unified or generating == 1):
            # with a buffer per sequence a draft beside another sequence's token is a compute pass of its own: none
            # is sent, nor looked for (~0.1 ms a step at four replies); drafting resumes when one reply is left
            saved = 0.0
        for order, slot in enumerate(busy):
            if n >= budget:
                break
            scored = slot.job.echo_logprobs  # type: ignore[union-attr]
            take = min(len(slot.pending), budget - n, ECHO_CHUNK if scored else budget)
            samples = take == len(slot.pending)
            # the step's size without further drafts: what is placed, and one token of each generating slot left
            planned_size = n + take + max(0, generating - order - 1)
            draft = self._draft(slot, budget - n - take, saved, planned_size) if samples and saved > 0 else []
            planned.append(Planned(slot, take, draft, samples, scored))
            n += take + len(draft)
        filler_slots = [] if self.kv_unified else fillers(planned, self._slots, self.slot_ctx, budget - n)
        return lay_out(self.batch, planned, filler_slots), filler_slots

    def _draft(self, slot: Slot, budget: int, saved: float, planned: int) -> list[int]:
        """Prompt-lookup draft for a generating slot: never past max_new_tokens, the slot's context or
        the batch, as long as it pays in a step of `planned` tokens where an accepted token saves `saved`
        seconds, and cut at the first token its grammar refuses."""
        job = slot.job
        if slot.drafter is None or job is None or not job.generated:
            return []
        room = min(job.max_new_tokens - len(job.generated) - 1, self.slot_ctx - len(slot.cached) - 2, budget)
        costs = self.step_costs
        draft = slot.drafter.draft(room, saved, lambda k: costs.extra(planned, k))
        if draft and slot.sampler is not None and slot.sampler.grammar is not None:
            draft = draft[: slot.sampler.grammar_allows(draft)]
        return draft

    def _sample(self, entry: Placed, now: float) -> None:
        """Sample the slot's next token and verify its draft: every drafted position is sampled in order
        while the token sampled equals the draft (see core/llama/speculation.py); the cache keeps what
        was accepted, and the tokens go to the job one by one as without speculation."""
        slot, job, draft = entry.slot, entry.slot.job, entry.draft
        assert job is not None and slot.sampler is not None and entry.output is not None
        tokens = [slot.sampler.sample(self.ctx, entry.output)]
        while len(tokens) <= len(draft) and tokens[-1] == draft[len(tokens) - 1] and tokens[-1] not in job.stop_ids:
            tokens.append(slot.sampler.sample(self.ctx, entry.output + len(tokens)))
        accepted = len(tokens) - 1
        if draft:
            slot.cached += draft[:accepted]
            self._ll.llama_memory_seq_rm(self.memory, slot.seq, len(slot.cached), -1)
            job.drafted, job.accepted = job.drafted + len(draft), job.accepted + accepted
            self.drafted_tokens += len(draft)
            self.accepted_tokens += accepted
            if slot.drafter is not None:
                slot.drafter.settle(len(draft), accepted)
        if not job.generated:
            job.first_token_at = now
        job.last_token_at = now
        for i, token in enumerate(tokens):
            if job.top_logprobs is not None:
                job.logprobs.append(logprob_at(self.logit_rows.at(self.ctx, entry.output + i), token,
                                               job.top_logprobs))
            if not self._take(slot, job, token):
                return
        slot.pending = [tokens[-1]]

    def _take(self, slot: Slot, job: Job, token: int) -> bool:
        """Give the job one token; False when that ended it."""
        if token in job.stop_ids:
            job.stop_token = token
            self._finish(slot, "stop")
            return False
        job.generated.append(token)
        if slot.drafter is not None:
            slot.drafter.extend([token])
        if job.on_token is not None and not job.on_token(token):
            self._finish(slot, "stop")
            return False
        if len(job.generated) >= job.max_new_tokens:
            self._finish(slot, "length")
            return False
        return True

    def abort(self, message: str) -> None:
        """End every running job with an error (after an unexpected failure in a step)."""
        self._fail([slot for slot in self._slots if slot.job is not None], message)

    def _fail(self, slots: list[Slot], message: str) -> None:
        for slot in slots:
            self._ll.llama_memory_seq_rm(self.memory, slot.seq, 0, -1)  # whatever half-happened is gone
            slot.cached.clear()
            if slot.job is not None:
                slot.job.error = message
                self._finish(slot, "error")

    def _finish(self, slot: Slot, reason: str) -> None:
        self._changed = True  # a slot is free for whoever waits
        job = slot.job
        if job is not None and reason in ("stop", "length"):
            self.caches.save(slot)
        slot.job, slot.pending, slot.drafter = None, [], None
        if slot.sampler:
            slot.sampler.free()
            slot.sampler = None
        if job is not None:
            self._end(job, reason)

    @staticmethod
    def _end(job: Job, reason: str) -> None:
        job.finish = reason
        if job.on_done:
            job.on_done(job)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit llama_cpp may already be gone
            self.close()

    def close(self) -> None:
        for slot in self._slots:
            if slot.job is not None:
                self._finish(slot, "cancelled")
        if self.ctx:
            self._ll.llama_batch_free(self.batch)
            self._ll.llama_free(self.ctx)
            self.ctx = None

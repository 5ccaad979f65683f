"""The continuous-batching decoder on its own: slots in one shared KV buffer or a buffer each, routing,
cancelling, limits."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import factory

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import ChatRuntime
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.llama.decoder import Decoder, Job
from glm4_local.core.llama.jobs import Slot
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.core.llama.slot_caches import SlotCaches

LAYOUTS = ["shared", "per-sequence"]  # the KV cache: one buffer for all slots, or (the default) a buffer each


def runtime(path: Path, slots: int, ctx: int, layout: str = "per-sequence") -> ChatRuntime:
    options = RuntimeOptions(ctx=ctx, threads=2)
    loaded = load_runtime(ModelFacts.read(path), options, slots=slots, shared_kv=layout == "shared")
    assert loaded.decoder.kv_unified == (layout == "shared" or slots == 1)
    return loaded


def run_all(decoder: Decoder, jobs: list[Job]) -> None:
    for job in jobs:
        decoder.submit(job)
    while decoder.has_work():
        decoder.step()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_many_jobs_of_every_length_fill_the_cache_without_failing(make_gguf: Callable[..., Path], layout: str) -> None:
    """Jobs come and go in every order until each slot's context is full: the cells they leave are
    reused (a buffer shared by all slots must never run out or fragment into a failure, nor must a step
    with filler rows overflow a slot's buffer)."""
    rt = runtime(make_gguf("f32"), slots=4, ctx=256, layout=layout)
    rng = random.Random(0)
    jobs = [Job([rng.randrange(1, 300) for _ in range(rng.randrange(5, 200))], SamplerSettings(), 0, frozenset())
            for _ in range(40)]
    run_all(rt.decoder, jobs)
    assert [j.finish for j in jobs] == ["length"] * 40 and not any(j.error for j in jobs)
    assert all(len(j.prompt) + len(j.generated) == rt.decoder.slot_ctx for j in jobs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batched_greedy_answers_equal_the_ones_decoded_alone(make_gguf: Callable[..., Path], layout: str) -> None:
    path = make_gguf("f32")
    prompts = [[5 + i, 17, 42 + 3 * i, 9] * (1 + i % 3) for i in range(6)]
    alone = runtime(path, slots=1, ctx=256, layout=layout)
    solo = [Job(p, SamplerSettings(), 20, frozenset()) for p in prompts]
    for job in solo:
        run_all(alone.decoder, [job])
    together = [Job(p, SamplerSettings(), 20, frozenset()) for p in prompts]
    batched = runtime(path, slots=3, ctx=256, layout=layout)
    calls = batched.decoder.decode_calls
    run_all(batched.decoder, together)
    assert [j.generated for j in together] == [j.generated for j in solo]
    assert batched.decoder.decode_calls - calls < sum(len(j.generated) for j in together) / 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_continued_prompt_goes_back_to_its_slot_and_reuses_it(make_gguf: Callable[..., Path], layout: str) -> None:
    rt = runtime(make_gguf("f32"), slots=2, ctx=256, layout=layout)
    first = Job(list(range(10, 60)), SamplerSettings(), 5, frozenset())
    other = Job(list(range(10, 20)) + list(range(100, 140)), SamplerSettings(), 5, frozenset())
    run_all(rt.decoder, [first, other])
    follow_up = Job(first.prompt + first.generated + [7, 8, 9], SamplerSettings(), 5, frozenset())
    run_all(rt.decoder, [follow_up])
    assert follow_up.evaluated_tokens == 3 + 1  # the new tokens, and the reply's last token (never fed)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_short_prompts_sent_again_go_back_to_the_slots_that_hold_them(make_gguf: Callable[..., Path],
                                                                       layout: str) -> None:
    """Four short prompts differing near their end, each answered at more length than it has, are sent again
    in another order (a retry, a regenerated reply): each returns to the slot holding it and reads only its
    last token (the oldest slot held another prompt: 3 tokens to read, and unequal counts compute in two passes)."""
    rt = runtime(make_gguf("f32"), slots=4, ctx=256, layout=layout)
    prompts = [[5, 17, 42, 9, 60 + i, 11, 12] for i in range(4)]
    run_all(rt.decoder, [Job(p, SamplerSettings(), 20, frozenset()) for p in prompts])
    again = [Job(p, SamplerSettings(), 20, frozenset()) for p in reversed(prompts)]
    run_all(rt.decoder, again)
    assert [job.evaluated_tokens for job in again] == [1, 1, 1, 1]
    follow_up = Job([5, 17, 42, 9, 99, 11, 12], SamplerSettings(), 5, frozenset())  # new: still the oldest slot's
    run_all(rt.decoder, [follow_up])
    assert follow_up.evaluated_tokens == 3


def test_the_slot_a_job_takes_keeps_live_conversations_and_reads_least() -> None:
    """Which free slot a prompt goes to: its conversation's; a slot holding all of a short prompt (sent again);
    otherwise the least recently used, also for a long prompt another slot holds whole (a copy brings it)."""
    system = list(range(100, 140))

    def slots(*caches: list[int]) -> list[Slot]:
        return [Slot(seq, cached=list(cache), used_at=float(seq)) for seq, cache in enumerate(caches)]

    def chosen(prompt: list[int], *caches: list[int]) -> int:
        return SlotCaches.choose(slots(*caches), prompt).seq

    short, reply = [1, 2, 3, 4, 5], list(range(500, 520))
    long_prompt = [*system, 7, 8]
    assert chosen([*short, *reply, 9], [9, 9], [*short, *reply]) == 1  # the conversation's next turn
    assert chosen(short, [9, 9], [*short, *reply]) == 1  # sent again: 4 tokens kept, no copy would be made
    assert chosen([1, 2, 3, 6, 5], [9, 9], [*short, *reply]) == 0  # a new prompt: the oldest slot
    assert chosen(long_prompt, [9, 9], [*long_prompt, *reply * 3]) == 0  # 41 tokens: copied, the slot kept
    assert chosen([*system, 30, 31], [9, 9], [*system, 20, 21, *reply * 3]) == 0  # a shared system prompt alone


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_prefix_another_slot_holds_is_shared_not_read_again(make_gguf: Callable[..., Path], layout: str) -> None:
    """Users with the same long system prompt: a new job in a free slot takes the shared prefix from the slot
    that holds it (running or done), and answers as it does alone. Between buffers of their own the copy is
    a whole buffer's, made at the next decode: the new job's part of it is right, the donor's goes on."""
    path = make_gguf("f32")
    system = [(7 * i) % 250 + 1 for i in range(120)]
    prompts = [[*system, 11, 12, 13], [*system, 21, 22], [*system[:60], 31, 32, 33]]
    alone = []
    for prompt in prompts:
        job = Job(prompt, SamplerSettings(), 12, frozenset())
        run_all(runtime(path, slots=1, ctx=512, layout=layout).decoder, [job])
        alone.append(job.generated)
    rt = runtime(path, slots=3, ctx=512, layout=layout)
    first = Job(prompts[0], SamplerSettings(), 12, frozenset())
    rt.decoder.submit(first)
    rt.decoder.step()  # its prompt read; it is still generating when the others come
    others = [Job(p, SamplerSettings(), 12, frozenset()) for p in prompts[1:]]
    run_all(rt.decoder, others)
    assert first.evaluated_tokens == len(prompts[0])
    assert [j.evaluated_tokens for j in others] == [2, 3]  # only what follows the prefix shared
    assert [first.generated, *(j.generated for j in others)] == alone


def test_cancelling_frees_the_slot_and_drops_waiting_jobs(make_gguf: Callable[..., Path]) -> None:
    rt = runtime(make_gguf("f32"), slots=1, ctx=256)
    running, waiting = (Job([1, 2, 3, 4], SamplerSettings(), 0, frozenset()) for _ in range(2))
    rt.decoder.submit(running)
    rt.decoder.submit(waiting)
    for _ in range(3):
        rt.decoder.step()
    rt.decoder.cancel(running)
    rt.decoder.cancel(waiting)
    rt.decoder.release_cancelled()
    assert (running.finish, waiting.finish) == ("cancelled", "cancelled")
    assert rt.decoder.active == 0 and not rt.decoder.has_work()


def test_stop_ids_and_on_token_end_a_job(make_gguf: Callable[..., Path]) -> None:
    rt = runtime(make_gguf("f32"), slots=1, ctx=256)
    probe = Job([3, 1, 4, 1, 5], SamplerSettings(), 6, frozenset())
    run_all(rt.decoder, [probe])
    stop = Job([3, 1, 4, 1, 5], SamplerSettings(), 6, frozenset({probe.generated[2]}))
    told: list[int] = []
    heard = Job([3, 1, 4, 1, 5], SamplerSettings(), 6, frozenset(), on_token=lambda t: told.append(t) or len(told) < 2)
    run_all(rt.decoder, [stop, heard])
    assert (stop.finish, stop.stop_token, stop.generated) == ("stop", probe.generated[2], probe.generated[:2])
    assert (heard.finish, told) == ("stop", probe.generated[:2])


def test_a_sampler_llama_cpp_refuses_ends_only_its_job(make_gguf: Callable[..., Path]) -> None:
    rt = runtime(make_gguf("f32"), slots=2, ctx=256)
    refused = Job([1, 2, 3], SamplerSettings(grammar="root ::= ("), 4, frozenset())
    fine = Job([1, 2, 3], SamplerSettings(), 4, frozenset())
    run_all(rt.decoder, [refused, fine])
    assert (refused.finish, fine.finish) == ("error", "length") and "grammar" in (refused.error or "")
    after = Job([1, 2, 3], SamplerSettings(), 4, frozenset())
    run_all(rt.decoder, [after])
    assert after.generated == fine.generated


def test_a_prompt_batch_stops_inside_llama_cpp_and_leaves_the_cache_as_it_was(make_gguf: Callable[..., Path]) -> None:
    import threading
    import time

    import pytest

    from glm4_local.core.llama.decoder import DecodeAborted

    rng = random.Random(1)
    prompt = [rng.randrange(1, 300) for _ in range(6000)]
    options = RuntimeOptions(ctx=8192, threads=2, batch=4096)
    rt = load_runtime(ModelFacts.read(make_gguf("f32", shape=factory.Shape(context=16384))), options)
    decoder = rt.decoder
    greedy = SamplerSettings(temperature=0.0)
    whole = Job(prompt, greedy, 8, frozenset())
    started = time.perf_counter()
    run_all(decoder, [whole])
    full = time.perf_counter() - started
    decoder.forget()
    job = Job(prompt, greedy, 8, frozenset())
    decoder.submit(job)
    assert decoder.prepare()  # a prompt batch comes next
    threading.Timer(min(0.1, full / 10), decoder.request_abort).start()
    started = time.perf_counter()
    with pytest.raises(DecodeAborted):
        decoder.step(abortable=True)
    assert time.perf_counter() - started < full / 2  # stopped inside the batch, not after it
    assert job.prompt_done == 0 and not job.done
    assert decoder.reading() == [(0, len(prompt))]  # what /health shows of a prompt being read
    decoder.step()
    assert decoder.reading() == [(4096, len(prompt))]
    while decoder.has_work():  # the same job goes on from where the cache really is
        decoder.step()
    assert job.generated == whole.generated and job.prompt_done == len(prompt)


def test_a_watched_reply_gets_the_next_free_slot_before_background_work(make_gguf: Callable[..., Path]) -> None:
    """Apps send their title and tag requests (not streamed) with the one a person watches (streamed): when
    the slots are short, the watched one goes first; among equals, first come first served."""
    decoder = runtime(make_gguf("f32"), slots=1, ctx=256).decoder
    busy = Job([1, 2, 3], SamplerSettings(), 3, frozenset())
    title, tags = (Job([4, 5, 6], SamplerSettings(), 3, frozenset(), watched=False) for _ in range(2))
    chat = Job([7, 8, 9], SamplerSettings(), 3, frozenset())
    started: list[Job] = []
    for job in (busy, title, tags, chat):
        decoder.submit(job)
    while decoder.has_work():
        decoder.step()
        started += [j for j in (busy, title, tags, chat) if j.started_at and j not in started]
    assert started == [busy, chat, title, tags]


def compute_passes(batch: object) -> int:
    """How many compute passes llama.cpp makes of `batch` with a KV buffer per sequence (llama_batch_allocr::
    split_equal, sequential): each pass takes, in batch order, sequences of consecutive ids from the first
    unused token's, the same number of tokens of each."""
    rows = [int(batch.seq_id[i][0]) for i in range(batch.n_tokens)]  # type: ignore[attr-defined]
    left = {seq: rows.count(seq) for seq in rows}
    passes = 0
    while left:
        chosen, last = [], None
        for seq in dict.fromkeys(rows):  # each sequence once, in order of its first row
            if left.get(seq) and (last is None or seq == last + 1):
                chosen.append(seq)
                last = seq
        each = min(left[seq] for seq in chosen)
        for seq in chosen:
            left[seq] -= each
            if not left[seq]:
                del left[seq]
        passes += 1
    return passes


def test_a_step_with_an_idle_slot_between_busy_ones_is_one_pass(make_gguf: Callable[..., Path]) -> None:
    """With a buffer per sequence, llama.cpp computes sequences 0 and 2 in separate passes (each reading all the
    weights) unless sequence 1 has a token in the step: the idle slot between them gets a filler row, whose cell
    is gone after the step, so its conversation's next turn still reads only its new tokens, answering the same."""
    path = make_gguf("f32")
    prompts = [[5, 17, 42, 9] * 3, [6, 18, 45, 9] * 2, [7, 19, 48, 9] * 4]
    alone = []
    for prompt, length in zip(prompts, (16, 2, 16), strict=True):
        job = Job(prompt, SamplerSettings(), length, frozenset())
        run_all(runtime(path, slots=1, ctx=256, layout="per-sequence").decoder, [job])
        alone.append(job.generated)
    decoder = runtime(path, slots=4, ctx=256, layout="per-sequence").decoder
    jobs = [Job(p, SamplerSettings(), length, frozenset()) for p, length in zip(prompts, (16, 2, 16), strict=True)]
    for job in jobs:
        decoder.submit(job)
    gaps = 0
    while decoder.has_work():
        decoder.step()
        if jobs[1].done and not jobs[0].done:  # slots 0 and 2 generate, slot 1 holds a finished conversation
            rows = [int(decoder.batch.seq_id[i][0]) for i in range(decoder.batch.n_tokens)]
            assert rows == [0, 1, 2] and compute_passes(decoder.batch) == 1
            gaps += 1
    assert gaps > 10 and [j.generated for j in jobs] == alone
    follow_up = Job(prompts[1] + jobs[1].generated + [3, 4], SamplerSettings(), 6, frozenset())
    run_all(decoder, [follow_up])
    again = Job(follow_up.prompt, SamplerSettings(), 6, frozenset())
    run_all(runtime(path, slots=1, ctx=256, layout="per-sequence").decoder, [again])
    assert follow_up.evaluated_tokens == 3 and follow_up.generated == again.generated


def test_a_buffer_awaiting_a_copy_is_not_loaded_from_disk(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    """Between buffers of their own llama.cpp copies a shared prefix at the next decode. A job that takes the
    donor's slot in the same step must not load a disk entry into it first (the copy would carry that entry
    into the other job's cache): it reads its prompt, and both answer as they do alone, to the log-probabilities
    (without the rule the first one's differ by up to 0.2, though the tiny model's greedy tokens may not)."""
    rng = random.Random(2)
    path = make_gguf("f32")
    system = [rng.randrange(1, 300) for _ in range(100)]
    document = [rng.randrange(1, 300) for _ in range(2300)]  # long enough to be kept on disk
    options = RuntimeOptions(ctx=4096, threads=2, prompt_cache=tmp_path)

    def answer(prompt: list[int], slots: int = 1, disk: bool = False) -> Job:
        loaded = load_runtime(ModelFacts.read(path), options if disk else replace(options, prompt_cache=None),
                              slots=slots)
        job = Job(prompt, SamplerSettings(), 6, frozenset(), top_logprobs=0)
        run_all(loaded.decoder, [job])
        if loaded.decoder.disk is not None:
            loaded.decoder.disk.close()  # written in the background: wait for it
        return job

    answer(document, disk=True)  # a run that read the document: it is on disk now
    asked = [[*system, 11, 12], [*document, 21, 22]]
    alone = [answer(prompt) for prompt in asked]
    decoder = load_runtime(ModelFacts.read(path), options, slots=2).decoder
    run_all(decoder, [Job(system + [rng.randrange(1, 300) for _ in range(200)], SamplerSettings(), 2, frozenset())])
    # the first takes slot 1 and the system prompt from slot 0; the second takes slot 0, which the disk entry fits
    jobs = [Job(prompt, SamplerSettings(), 6, frozenset(), top_logprobs=0) for prompt in asked]
    run_all(decoder, jobs)
    assert [j.evaluated_tokens for j in jobs] == [2, len(asked[1])]
    assert [j.generated for j in jobs] == [j.generated for j in alone]
    for job, by_itself in zip(jobs, alone, strict=True):
        assert [t.logprob for t in job.logprobs] == pytest.approx([t.logprob for t in by_itself.logprobs], abs=0.01)
    again = Job(asked[1], SamplerSettings(), 6, frozenset())  # with no copy pending, the disk entry loads
    assert decoder.disk is not None
    decoder.disk.writer.submit(lambda: None).result()  # what the second job saved is written
    decoder.forget()
    run_all(decoder, [again])
    assert again.evaluated_tokens < 256 and again.generated == alone[1].generated


def test_fillers_close_every_gap_or_none() -> None:
    """A filler helps only if every gap between the step's sequences gets one: with too little room in the
    batch, or a gap whose buffer is full, none is added (the pass is split either way)."""
    from glm4_local.core.llama.batch_layout import Planned, fillers
    from glm4_local.core.llama.jobs import Slot

    slots = [Slot(i, cached=[1] * 10) for i in range(5)]
    step = [Planned(slots[0], 1), Planned(slots[3], 1)]
    assert [s.seq for s in fillers(step, slots, slot_ctx=64, room=8)] == [1, 2]
    assert fillers(step, slots, slot_ctx=64, room=1) == []
    assert fillers([Planned(slots[4], 1)], slots, slot_ctx=64, room=8) == []  # one sequence: one pass anyway
    slots[2].cached = [1] * 64
    assert fillers(step, slots, slot_ctx=64, room=8) == []


def test_logit_rows_are_what_llama_cpp_holds_as_its_output_buffer_grows(make_gguf: Callable[..., Path]) -> None:
    """The decoder's cached views of logits rows read llama.cpp's rows exactly: before, while and after
    llama.cpp reallocates its output buffer for a batch with more rows of logits than any before."""
    import ctypes

    import llama_cpp as ll
    import numpy as np

    decoder = runtime(make_gguf("f32"), slots=1, ctx=256).decoder
    for outputs in (1, 3, 64, 2):  # 64 rows: more than the buffer held so far
        ll.llama_memory_clear(decoder.memory, True)
        tokens = (ll.llama_token * 64)(*range(10, 74))
        batch = ll.llama_batch_get_one(tokens, 64)
        wanted = (ctypes.c_int8 * 64)(*([0] * (64 - outputs) + [1] * outputs))
        batch.logits = ctypes.cast(wanted, type(batch.logits))
        assert ll.llama_decode(decoder.ctx, batch) == 0
        for index in range(64 - outputs, 64):
            held = np.ctypeslib.as_array(ll.llama_get_logits_ith(decoder.ctx, index), shape=(decoder.n_vocab,))
            assert np.array_equal(decoder.logit_rows.at(decoder.ctx, index), held)

"""The continuous-batching decoder on its own: slots sharing one KV cache, routing, cancelling, limits."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from helpers import factory

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import ChatRuntime
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.llama.decoder import Decoder, Job
from glm4_local.core.llama.sampling import SamplerSettings


def runtime(path: Path, slots: int, ctx: int) -> ChatRuntime:
    return load_runtime(ModelFacts.read(path), RuntimeOptions(ctx=ctx, threads=2), slots=slots)


def run_all(decoder: Decoder, jobs: list[Job]) -> None:
    for job in jobs:
        decoder.submit(job)
    while decoder.has_work():
        decoder.step()


def test_many_jobs_of_every_length_fill_the_shared_cache_without_failing(make_gguf: Callable[..., Path]) -> None:
    """Jobs come and go in every order until each slot's context is full: the cells they leave are
    reused (a buffer shared by all slots must never run out or fragment into a failure)."""
    rt = runtime(make_gguf("f32"), slots=4, ctx=256)
    rng = random.Random(0)
    jobs = [Job([rng.randrange(1, 300) for _ in range(rng.randrange(5, 200))], SamplerSettings(), 0, frozenset())
            for _ in range(40)]
    run_all(rt.decoder, jobs)
    assert [j.finish for j in jobs] == ["length"] * 40 and not any(j.error for j in jobs)
    assert all(len(j.prompt) + len(j.generated) == rt.decoder.slot_ctx for j in jobs)


def test_batched_greedy_answers_equal_the_ones_decoded_alone(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf("f32")
    prompts = [[5 + i, 17, 42 + 3 * i, 9] * (1 + i % 3) for i in range(6)]
    alone = runtime(path, slots=1, ctx=256)
    solo = [Job(p, SamplerSettings(), 20, frozenset()) for p in prompts]
    for job in solo:
        run_all(alone.decoder, [job])
    together = [Job(p, SamplerSettings(), 20, frozenset()) for p in prompts]
    batched = runtime(path, slots=3, ctx=256)
    calls = batched.decoder.decode_calls
    run_all(batched.decoder, together)
    assert [j.generated for j in together] == [j.generated for j in solo]
    assert batched.decoder.decode_calls - calls < sum(len(j.generated) for j in together) / 2


def test_a_continued_prompt_goes_back_to_its_slot_and_reuses_it(make_gguf: Callable[..., Path]) -> None:
    rt = runtime(make_gguf("f32"), slots=2, ctx=256)
    first = Job(list(range(10, 60)), SamplerSettings(), 5, frozenset())
    other = Job(list(range(10, 20)) + list(range(100, 140)), SamplerSettings(), 5, frozenset())
    run_all(rt.decoder, [first, other])
    follow_up = Job(first.prompt + first.generated + [7, 8, 9], SamplerSettings(), 5, frozenset())
    run_all(rt.decoder, [follow_up])
    assert follow_up.evaluated_tokens == 3 + 1  # the new tokens, and the reply's last token (never fed)


def test_a_prefix_another_slot_holds_is_shared_not_read_again(make_gguf: Callable[..., Path]) -> None:
    """Users with the same long system prompt: a new job in a free slot takes the shared prefix from the slot
    that holds it (running or done), and answers as it does alone."""
    path = make_gguf("f32")
    system = [(7 * i) % 250 + 1 for i in range(120)]
    prompts = [[*system, 11, 12, 13], [*system, 21, 22], [*system[:60], 31, 32, 33]]
    alone = []
    for prompt in prompts:
        job = Job(prompt, SamplerSettings(), 12, frozenset())
        run_all(runtime(path, slots=1, ctx=512).decoder, [job])
        alone.append(job.generated)
    rt = runtime(path, slots=3, ctx=512)
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

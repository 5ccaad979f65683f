"""How the server's decoder thread hands tokens to the requests' event loop (server/scheduler.py, outbox.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.server.outbox import Outbox, TokenStream
from glm4_local.server.scheduler import Scheduler

TOKENS = 20
WAIT = 10  # seconds before a hung hand-over fails the test


class ScriptedDecoder:
    """A decoder whose job gets one token a step (token k at step k). After a token in `wait_for_reader` its
    next step waits, as a long llama_decode would, until the request has read that token."""

    slot_count, active, queued = 4, 0, 0

    def __init__(self, wait_for_reader: set[int]) -> None:
        self.jobs: list[Job] = []
        self.steps = 0
        self.wait_for_reader = wait_for_reader
        self.read: list[int] = []
        self.read_more = threading.Condition()
        self.stalled = False  # a wait ran out: the token never reached the reader

    def submit(self, job: Job) -> None:
        self.jobs.append(job)

    def step(self, abortable: bool = False) -> bool:
        if not self.jobs:
            return False
        if (last := self.steps - 1) in self.wait_for_reader:
            with self.read_more:
                self.stalled |= not self.read_more.wait_for(lambda: last in self.read, WAIT)
        job = self.jobs[0]
        job.on_token(self.steps)  # type: ignore[misc]
        self.steps += 1
        if self.steps == TOKENS:
            job.finish = "length"
            job.on_done(job)  # type: ignore[misc]
            self.jobs.clear()
        return True

    def calibrate(self) -> bool:
        return False  # nothing to measure while idle

    def cancel_all(self) -> None:
        self.jobs.clear()


def handed_over(monkeypatch: pytest.MonkeyPatch, seconds: float, wait_for_reader: set[int] = frozenset(),
                stream: bool = True) -> tuple[list[int], list[list[Any]], bool]:
    """The tokens a request read, what each fetch by its event loop brought ("woken" first where the
    decoder thread asked for the fetch, "timer" where the loop's own timer did), and whether the loop
    had a timer set for it. `stream`: a streamed reply, else a whole one without stop strings."""
    fetches: list[list[Any]] = []
    fetch = Outbox.fetch

    def counted(self: Outbox, loop: asyncio.AbstractEventLoop) -> None:
        box = self._boxes[loop]
        fetches.append(["woken" if box.woken else "timer", *(token for _, token in box.pending)])
        fetch(self, loop)

    monkeypatch.setattr(Outbox, "fetch", counted)
    decoder = ScriptedDecoder(set(wait_for_reader))
    runtime = SimpleNamespace(decoder=decoder, vocab=SimpleNamespace(stop_ids=()))
    scheduler = Scheduler(runtime, hand_over_seconds=seconds)  # type: ignore[arg-type]
    plan = SimpleNamespace(prompt=[1, 2, 3], sampler=SamplerSettings(), max_new_tokens=TOKENS, stream=stream,
                           stop_strings=[], top_logprobs=None, echo=False)
    timed = []

    async def read() -> list[int]:
        loop = asyncio.get_running_loop()
        _, tokens_of = scheduler.submit(plan, loop)  # type: ignore[arg-type]
        box = scheduler._outbox._boxes.get(loop)
        timed.append(box is not None and box.timer is not None)
        tokens = []
        async for token in tokens_of:
            tokens.append(token)
            with decoder.read_more:
                decoder.read.append(token)
                decoder.read_more.notify_all()
        return tokens

    scheduler.start()
    try:
        tokens = asyncio.run(asyncio.wait_for(read(), WAIT))
    finally:
        scheduler.stop()
    assert not decoder.stalled
    return tokens, [f for f in fetches if len(f) > 1], timed[0]


def test_the_decoder_wakes_the_loop_only_for_a_replys_first_token_and_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held back (an hour here: the loop's own timer never fires), a reply's tokens still come: its first at
    once (time to first token), the rest with its end; the decoder thread asks for nothing else."""
    tokens, fetches, _ = handed_over(monkeypatch, 3600.0, wait_for_reader={0})
    assert tokens == list(range(TOKENS))
    assert fetches == [["woken", 0], ["woken", *range(1, TOKENS), None]]


def test_a_whole_reply_without_stop_strings_is_handed_over_once_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing reads such a reply's tokens before its end: no timer runs for it, no wake-up brings its first."""
    tokens, fetches, timed = handed_over(monkeypatch, 0.01, stream=False)
    assert tokens == list(range(TOKENS))
    assert fetches == [["woken", *range(TOKENS), None]] and not timed


def test_the_loop_fetches_tokens_on_its_own_timer_while_the_decoder_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 6's llama_decode (here: a wait) lasts until the request has read tokens 1-5, which the decoder
    thread never hands over itself: only the loop's timer can bring them, before the reply ends."""
    tokens, fetches, timed = handed_over(monkeypatch, 0.01, wait_for_reader={0, 5})
    assert tokens == list(range(TOKENS)) and timed
    assert fetches[0] == ["woken", 0]
    middle = [fetch for fetch in fetches if set(fetch) & {1, 2, 3, 4, 5}]
    assert {fetch[0] for fetch in middle} == {"timer"} and [t for f in middle for t in f[1:]] == [1, 2, 3, 4, 5]


def test_without_holding_back_every_step_wakes_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hand_over_seconds=0` (engines in other processes, no timer): each step's token reaches the request
    before the next step (every step here waits until it has)."""
    tokens, fetches, _ = handed_over(monkeypatch, 0.0, wait_for_reader=set(range(TOKENS - 1)))
    assert tokens == list(range(TOKENS))
    assert fetches == [["woken", t] for t in range(TOKENS - 1)] + [["woken", TOKENS - 1, None]]


class BurstDecoder(ScriptedDecoder):
    """Ends every job at its first step; remembers how many jobs that first step had."""

    def __init__(self, generating: int = 0) -> None:
        super().__init__(set())
        self.active = generating  # slots generating (none reading a prompt)
        self.first_step: int | None = None
        self.stepped = threading.Event()

    def reading(self) -> list[tuple[int, int]]:
        return []

    def step(self, abortable: bool = False) -> bool:
        if self.jobs and self.first_step is None:
            self.first_step = len(self.jobs)
            self.stepped.set()
        for job in self.jobs:
            job.finish = "length"
            job.on_done(job)  # type: ignore[misc]
        worked, self.jobs = bool(self.jobs), []
        return worked


PLAN = SimpleNamespace(prompt=[1, 2, 3], sampler=SamplerSettings(), max_new_tokens=TOKENS, stream=False,
                       stop_strings=[], top_logprobs=None, echo=False)


def burst_scheduler(decoder: BurstDecoder, coalesce_seconds: float = WAIT) -> tuple[Scheduler, threading.Event]:
    """A scheduler over `decoder`, and an event set as its thread waits for an arrival, or steps."""
    scheduler = Scheduler(SimpleNamespace(decoder=decoder, vocab=SimpleNamespace(stop_ids=())),  # type: ignore[arg-type]
                          hand_over_seconds=0.01, coalesce_seconds=coalesce_seconds)
    either = threading.Event()
    wait = scheduler._arrived.wait
    scheduler._arrived.wait = lambda timeout=None: (either.set(), wait(timeout))[1]  # type: ignore[method-assign]
    threading.Thread(target=lambda: decoder.stepped.wait(WAIT) and either.set(), daemon=True).start()
    return scheduler, either


def test_an_idle_decoder_waits_for_a_request_being_planned_until_it_is_submitted() -> None:
    """A burst of requests to an idle server: the first submitted waits (here up to WAIT) for the other, whose
    plan is made but not yet submitted (its handler waits for the event loop meanwhile), and both read their
    prompts in one step."""
    decoder = BurstDecoder()
    scheduler, either = burst_scheduler(decoder)

    async def burst() -> None:
        loop = asyncio.get_running_loop()
        planned, go = asyncio.Event(), asyncio.Event()

        async def second() -> TokenStream:  # its own task, as every request is
            with scheduler.arriving():
                pass  # rendered and tokenized
            planned.set()
            await go.wait()
            return scheduler.submit(PLAN, loop)[1]  # type: ignore[arg-type]

        task = asyncio.create_task(second())
        await planned.wait()  # from before the decoder's first look, so no step can come between
        scheduler.start()
        _, first = scheduler.submit(PLAN, loop)  # type: ignore[arg-type]
        assert await asyncio.to_thread(either.wait, WAIT)
        go.set()
        assert [t async for t in first] == [] and [t async for t in await task] == []

    try:
        asyncio.run(asyncio.wait_for(burst(), WAIT))
    finally:
        scheduler.stop()
    assert decoder.first_step == 2


def test_an_arrival_never_submitted_is_waited_for_only_while_young() -> None:
    """A request that fails after its plan never submits a job: the decoder stops waiting for it once it is
    coalesce_seconds old, and never waits for it again."""
    decoder = BurstDecoder()
    scheduler, either = burst_scheduler(decoder, coalesce_seconds=0.2)
    with scheduler.arriving():
        pass
    scheduler._await_arrivals()
    assert either.is_set()  # it waited, once
    either.clear()
    scheduler._await_arrivals()
    assert not either.is_set()
    decoder.stepped.set()  # ends the watching thread


def test_a_generating_decoder_never_waits_for_arrivals() -> None:
    decoder = BurstDecoder(generating=1)
    scheduler = Scheduler(SimpleNamespace(decoder=decoder, vocab=SimpleNamespace(stop_ids=())),  # type: ignore[arg-type]
                          coalesce_seconds=WAIT)
    with scheduler.arriving():
        started = time.monotonic()
        scheduler._await_arrivals()
        assert time.monotonic() - started < WAIT / 2

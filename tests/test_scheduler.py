"""How the server's decoder thread hands tokens to the requests' event loop (server/scheduler.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.server import scheduler as scheduling
from glm4_local.server.scheduler import Scheduler

TOKENS = 20
PROMPT_BATCH_AT = 10  # the step before which another job starts reading a long prompt


class ScriptedDecoder:
    """A decoder whose job gets one token a step; before step PROMPT_BATCH_AT another job's prompt is read,
    and that job goes on generating (for nobody here) after the first has ended."""

    slot_count, active, queued = 4, 0, 0

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.steps = 0

    def submit(self, job: Job) -> None:
        self.jobs.append(job)

    def prepare(self) -> bool:
        return bool(self.jobs) and self.steps == PROMPT_BATCH_AT

    def step(self, abortable: bool = False) -> bool:
        if not self.jobs:
            return self.steps >= PROMPT_BATCH_AT  # the other job's step
        job = self.jobs[0]
        job.on_token(self.steps)  # type: ignore[misc]
        self.steps += 1
        if self.steps == TOKENS:
            job.finish = "length"
            job.on_done(job)  # type: ignore[misc]
            self.jobs.clear()
        return True

    def cancel_all(self) -> None:
        self.jobs.clear()
        self.steps = 0


def handed_over(monkeypatch: pytest.MonkeyPatch, seconds: float) -> tuple[list[int], list[list[int | None]]]:
    """The tokens a request read, and what each wake-up of its event loop brought."""
    deliveries: list[list[int | None]] = []
    deliver = scheduling._deliver

    def counted(items: list[Any]) -> None:
        deliveries.append([token for _, token in items])
        deliver(items)

    monkeypatch.setattr(scheduling, "_deliver", counted)
    runtime = SimpleNamespace(decoder=ScriptedDecoder(), vocab=SimpleNamespace(stop_ids=()))
    scheduler = Scheduler(runtime, hand_over_seconds=seconds)  # type: ignore[arg-type]
    plan = SimpleNamespace(prompt=[1, 2, 3], sampler=SamplerSettings(), max_new_tokens=TOKENS, stream=True,
                           top_logprobs=None, echo=False)

    async def read() -> list[int]:
        _, stream = scheduler.submit(plan, asyncio.get_running_loop())  # type: ignore[arg-type]
        return [token async for token in stream]

    scheduler.start()
    try:
        tokens = asyncio.run(asyncio.wait_for(read(), 10))
    finally:
        scheduler.stop()
    return tokens, deliveries


def test_tokens_reach_the_event_loop_in_few_wake_ups_yet_the_first_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held back (an hour here: no hand-over falls due by time), a reply's tokens still come: its first
    token at once, what came before a prompt batch before that batch, the rest with its end (while the
    decoder goes on with another job)."""
    tokens, deliveries = handed_over(monkeypatch, 3600.0)
    assert tokens == list(range(TOKENS))
    assert deliveries == [[0], list(range(1, PROMPT_BATCH_AT)), [*range(PROMPT_BATCH_AT, TOKENS), None]]


def test_without_holding_back_every_step_is_handed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hand_over_seconds=0` (engines in other processes): each step's token as it comes."""
    tokens, deliveries = handed_over(monkeypatch, 0.0)
    assert tokens == list(range(TOKENS))
    assert deliveries == [[t] for t in range(TOKENS - 1)] + [[TOKENS - 1, None]]

"""The decoder's own thread, and the bridge between its jobs and the server's asyncio requests.

One worker thread steps the decoder (one llama_decode for every active request); request handlers
submit jobs and read their tokens from an asyncio queue. Requests beyond the slots wait in a bounded
queue; past it the server answers 503 with Retry-After instead of piling up work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from glm4_local.chat.runtime import ChatRuntime
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.sampling import DecodeError
from glm4_local.server.engine_pool import EnginesDown
from glm4_local.server.options import DEFAULT_MAX_QUEUE
from glm4_local.server.outbox import HAND_OVER_SECONDS, Outbox, TokenStream
from glm4_local.server.plan import Plan
from glm4_local.server.protocol import ApiError

log = logging.getLogger("glm4_local.server")
RETRY_AFTER_SECONDS = 2
# how long an idle decoder waits for requests still being planned to be submitted, so that a burst of them
# reads its prompts in one step and generates in step (their template and tokens take milliseconds each)
COALESCE_SECONDS = 0.05
# the arrival (see Scheduler.arriving) of the request this asyncio task handles, until its job is submitted
_ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("glm4_local_arrival", default=None)


@dataclass
class Counters:
    """Totals since start, for /metrics."""

    requests: int = 0
    rejected: int = 0  # queue full
    cancelled: int = 0  # client went away
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from a slot's cache
    generated_tokens: int = 0


class Scheduler:
    def __init__(self, runtime: ChatRuntime, max_queue: int = DEFAULT_MAX_QUEUE,
                 hand_over_seconds: float = HAND_OVER_SECONDS, coalesce_seconds: float = COALESCE_SECONDS) -> None:
        """`hand_over_seconds`: see Outbox; `coalesce_seconds`: see arriving()."""
        self.runtime = runtime
        self.decoder = runtime.decoder
        self.max_queue = max_queue
        self.counters = Counters()
        self._wake = threading.Event()
        self._admit = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="glm4-local-decoder", daemon=True)
        self._outbox = Outbox(hand_over_seconds)
        self.coalesce_seconds = coalesce_seconds
        self._arrivals: list[float] = []  # when each request arriving (see arriving()) began
        self._arrived = threading.Condition()

    def start(self) -> None:
        self._thread.start()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around planning a request (body read: rendering, tokenizing); the arrival lasts until this task
        submits the request's job, or the block fails. Four requests sent at once to an idle server were
        planned one after another on the event loop, and the decoder started the first alone: the others read
        their prompts a step later and trailed by a step to the end of their replies (2 cores, 12 × 1024 q8_0:
        ~1% of a 4.5 s round of 128 tokens each). An idle decoder waits for what is arriving, up to
        `coalesce_seconds`; one that is generating never waits. An arrival that ended with its plan, not its
        submission, let the decoder start in between: after a quiet spell the event loop waited up to 5 ms for
        the GIL before submitting. One whose job is never submitted (a request failing after its plan) is not
        waited for once `coalesce_seconds` old."""
        since = time.monotonic()
        with self._arrived:
            self._forget_arrivals_before(since - self.coalesce_seconds)
            self._arrivals.append(since)
        _ARRIVAL.set(since)
        try:
            yield
        except BaseException:
            self._arrived_one()
            raise

    def _arrived_one(self) -> None:
        """This task's arrival, if it has one open, is over."""
        since = _ARRIVAL.get()
        if since is None:
            return
        _ARRIVAL.set(None)
        with self._arrived:
            if since in self._arrivals:  # not aged out meanwhile
                self._arrivals.remove(since)
            self._arrived.notify_all()

    def _await_arrivals(self) -> None:
        if not self._arrivals or self.decoder.active > len(self.decoder.reading()):  # someone is generating
            return
        deadline = time.monotonic() + self.coalesce_seconds
        with self._arrived:
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._forget_arrivals_before(time.monotonic() - self.coalesce_seconds)
                if not self._arrivals:
                    return
                young_until = max(self._arrivals) + self.coalesce_seconds  # then none is waited for
                self._arrived.wait(min(left, young_until - time.monotonic()))

    def _forget_arrivals_before(self, oldest: float) -> None:
        """Arrivals older than this were never submitted: nothing waits for them (holding _arrived)."""
        self._arrivals[:] = [since for since in self._arrivals if since >= oldest]

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._await_arrivals()
                worked = self.decoder.step()
                idle = not worked and not self.decoder.calibrate()  # measures step costs while nothing runs
            except Exception as e:  # a bug must not kill the server's only decoder, nor hang its clients
                log.exception("decoder step failed")
                self.decoder.abort(f"internal error ({type(e).__name__})")
                worked, idle = False, True
            self._outbox.wake(everyone=not worked)
            if idle:
                self._wake.wait(0.5)
                self._wake.clear()
        self.decoder.cancel_all()
        self._outbox.wake(everyone=True)

    def submit(self, plan: Plan, loop: asyncio.AbstractEventLoop) -> tuple[Job, TokenStream]:
        """Queue a job for `plan`; ApiError 503 (Retry-After) when the waiting queue is full."""
        try:
            return self._submit(plan, loop)
        finally:
            self._arrived_one()  # after the job is queued: the decoder, woken, finds it

    def _submit(self, plan: Plan, loop: asyncio.AbstractEventLoop) -> tuple[Job, TokenStream]:
        stream = TokenStream(loop, self._outbox, timely=plan.stream or bool(plan.stop_strings))
        job = Job(plan.prompt, plan.sampler, plan.max_new_tokens, frozenset(self.runtime.vocab.stop_ids),
                  on_token=stream.on_token, on_done=stream.on_done, watched=plan.stream,
                  top_logprobs=plan.top_logprobs, echo_logprobs=plan.echo and plan.top_logprobs is not None)
        with self._admit:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", "server_error")
            free = self.decoder.slot_count - self.decoder.active
            if self.decoder.queued - free >= self.max_queue:
                self.counters.rejected += 1
                raise ApiError(503, f"the server is busy ({self.max_queue} requests waiting); retry shortly",
                               "server_error", code="server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            try:
                self.decoder.submit(job)
            except EnginesDown as e:
                raise ApiError(503, str(e), "server_error", code="engines_down",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
            except DecodeError as e:
                raise ApiError(400, str(e)) from None
        self._outbox.opened(stream)
        self.counters.requests += 1
        self._wake.set()
        return job, stream

    def cancel(self, job: Job, client_gone: bool = False) -> None:
        if not job.done and not job.cancelled:
            self.decoder.cancel(job)
            self.counters.cancelled += client_gone
            self._wake.set()

    def account(self, job: Job) -> None:
        c = self.counters
        c.prompt_tokens += len(job.prompt)
        c.cached_tokens += len(job.prompt) - job.evaluated_tokens
        c.generated_tokens += len(job.generated)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

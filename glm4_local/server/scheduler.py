"""The decoder's own thread, and the bridge between its jobs and the server's asyncio requests.

One worker thread steps the decoder (one llama_decode for every active request); request handlers
submit jobs and read their tokens from an asyncio queue. Requests beyond the slots wait in a bounded
queue; past it the server answers 503 with Retry-After instead of piling up work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from glm4_local.chat.runtime import ChatRuntime
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.sampling import DecodeError
from glm4_local.server.engine_pool import EnginesDown
from glm4_local.server.options import DEFAULT_MAX_QUEUE
from glm4_local.server.plan import Plan
from glm4_local.server.protocol import ApiError

log = logging.getLogger("glm4_local.server")
RETRY_AFTER_SECONDS = 2


@dataclass
class Counters:
    """Totals since start, for /metrics."""

    requests: int = 0
    rejected: int = 0  # queue full
    cancelled: int = 0  # client went away
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from a slot's cache
    generated_tokens: int = 0


class TokenStream:
    """One job's tokens, handed from the decoder thread to the request's event loop.

    The decoder thread only appends to `outbox`; the scheduler hands each step's tokens over in one
    call, so the event loop wakes once per step, not once per token per request: on a machine with
    few cores every wake-up steals time from llama.cpp's compute threads.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: list[tuple[TokenStream, int | None]]) -> None:
        self.loop = loop
        self.outbox = outbox
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()

    def on_token(self, token: int) -> bool:
        self.outbox.append((self, token))
        return True

    def on_done(self, job: Job) -> None:
        self.outbox.append((self, None))

    async def __aiter__(self) -> AsyncIterator[int]:
        while (token := await self.queue.get()) is not None:
            yield token


def _deliver(items: list[tuple[TokenStream, int | None]]) -> None:
    for stream, token in items:
        stream.queue.put_nowait(token)


class Scheduler:
    def __init__(self, runtime: ChatRuntime, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.runtime = runtime
        self.decoder = runtime.decoder
        self.max_queue = max_queue
        self.counters = Counters()
        self._wake = threading.Event()
        self._admit = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="glm4-local-decoder", daemon=True)
        self._outbox: list[tuple[TokenStream, int | None]] = []  # filled by the decoder thread during a step

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                worked = self.decoder.step()
            except Exception as e:  # a bug must not kill the server's only decoder, nor hang its clients
                log.exception("decoder step failed")
                self.decoder.abort(f"internal error ({type(e).__name__})")
                worked = False
            self._flush()
            if not worked:
                self._wake.wait(0.5)
                self._wake.clear()
        self.decoder.cancel_all()
        self._flush()

    def _flush(self) -> None:
        """Hand what the last step produced to the event loop(s), in one call each."""
        if not self._outbox:
            return
        items, self._outbox[:] = list(self._outbox), []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[TokenStream, int | None]]] = {}
        for stream, token in items:
            by_loop.setdefault(stream.loop, []).append((stream, token))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                loop.call_soon_threadsafe(_deliver, batch)

    def submit(self, plan: Plan, loop: asyncio.AbstractEventLoop) -> tuple[Job, TokenStream]:
        """Queue a job for `plan`; ApiError 503 (Retry-After) when the waiting queue is full."""
        stream = TokenStream(loop, self._outbox)
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

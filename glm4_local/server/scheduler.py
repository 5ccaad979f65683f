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
import time
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


HAND_OVER_SECONDS = 0.04  # tokens reach the event loop at most this often (a reply's first token and its end at once)


class Outbox:
    """What the decoder thread produced for the requests, until it is handed to their event loops.

    Every hand-over wakes an event loop, whose Python then holds the GIL that the decoder thread needs
    between two llama_decode calls: handed over every step, a one-stream reply of a small model lost
    0.2 ms a token (4%) waiting for it. So tokens go at most every `seconds`, except what someone waits
    for: a reply's first token (time to first token) and its end.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.items: list[tuple[TokenStream, int | None]] = []
        self.urgent = False
        self.sent_at = time.monotonic()

    def put(self, stream: TokenStream, token: int | None, urgent: bool) -> None:
        self.items.append((stream, token))
        self.urgent = self.urgent or urgent

    def take(self, force: bool = False) -> list[tuple[TokenStream, int | None]]:
        """What is to be handed over now (nothing while it may wait)."""
        now = time.monotonic()
        if not self.items or not (force or self.urgent or now - self.sent_at >= self.seconds):
            return []
        items, self.items, self.urgent, self.sent_at = self.items, [], False, now
        return items


class TokenStream:
    """One job's tokens, handed from the decoder thread to the request's event loop through the Outbox."""

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: Outbox) -> None:
        self.loop = loop
        self.outbox = outbox
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._started = False

    def on_token(self, token: int) -> bool:
        self.outbox.put(self, token, urgent=not self._started)
        self._started = True
        return True

    def on_done(self, job: Job) -> None:
        self.outbox.put(self, None, urgent=True)

    async def __aiter__(self) -> AsyncIterator[int]:
        while (token := await self.queue.get()) is not None:
            yield token


def _deliver(items: list[tuple[TokenStream, int | None]]) -> None:
    for stream, token in items:
        stream.queue.put_nowait(token)


class Scheduler:
    def __init__(self, runtime: ChatRuntime, max_queue: int = DEFAULT_MAX_QUEUE,
                 hand_over_seconds: float = HAND_OVER_SECONDS) -> None:
        """`hand_over_seconds`: see Outbox; 0 where no llama_decode runs in this process (engines)."""
        self.runtime = runtime
        self.decoder = runtime.decoder
        self.max_queue = max_queue
        self.counters = Counters()
        self._wake = threading.Event()
        self._admit = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="glm4-local-decoder", daemon=True)
        self._outbox = Outbox(hand_over_seconds)  # filled by the decoder thread during a step

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                if self.decoder.prepare():  # a prompt batch (seconds on a CPU): nothing waits behind it
                    self._flush(force=True)
                worked = self.decoder.step()
            except Exception as e:  # a bug must not kill the server's only decoder, nor hang its clients
                log.exception("decoder step failed")
                self.decoder.abort(f"internal error ({type(e).__name__})")
                worked = False
            self._flush(force=not worked)
            if not worked:
                self._wake.wait(0.5)
                self._wake.clear()
        self.decoder.cancel_all()
        self._flush(force=True)

    def _flush(self, force: bool = False) -> None:
        """Hand what the last steps produced to the event loop(s), in one call each, when the Outbox says so."""
        items = self._outbox.take(force)
        if not items:
            return
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

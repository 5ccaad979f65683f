"""How tokens cross from the decoder thread to the requests' event loops without holding the decoder up.

Waking an event loop from the decoder thread is what costs: the woken thread takes a core (on a machine
whose cores all compute, the decoder thread's) and the GIL, and the decoder waits for both before its
next llama_decode. Measured on 2 cores, 12 × 1024 q8_0, 4 streams: 0.55 ms a wake-up, 1.4% of the
run at one wake-up every 40 ms. So the decoder thread wakes a loop only for what someone waits on (a
streamed reply's first token, a reply's end); the rest of a timely stream's tokens (a streamed reply, or
one with stop strings to find) each loop fetches on its own timer, which fires while the decoder is
inside llama_decode with the GIL released. A whole reply without stop strings needs none until its end,
and costs its loop nothing meanwhile. Every take happens on the loop's own thread, so a stream's tokens
arrive in order whichever way they were fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from glm4_local.core.llama.decoder import Job

HAND_OVER_SECONDS = 0.04  # how often a loop fetches tokens while it has replies under way


@dataclass
class _LoopBox:
    pending: list[tuple[TokenStream, int | None]] = field(default_factory=list)  # under Outbox._lock
    urgent: bool = False  # something pending is waited for (under Outbox._lock, as is `woken`)
    woken: bool = False  # a fetch is queued on the loop by the decoder thread
    open_streams: int = 0  # timely streams not ended (the loop's own thread only, as is `timer`)
    timer: asyncio.TimerHandle | None = None


class Outbox:
    """Tokens on their way to each event loop. `seconds` = 0 (no llama_decode in this process: engines)
    wakes the loop for every step's tokens."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._boxes: dict[asyncio.AbstractEventLoop, _LoopBox] = {}

    def _box(self, loop: asyncio.AbstractEventLoop) -> _LoopBox:
        return self._boxes.setdefault(loop, _LoopBox())

    # -- the decoder thread ----------------------------------------------------------------------------
    def put(self, stream: TokenStream, token: int | None, urgent: bool) -> None:
        with self._lock:
            box = self._box(stream.loop)
            box.pending.append((stream, token))
            box.urgent |= urgent or (not self.seconds and stream.timely)  # no loop timer fetches them

    def wake(self, everyone: bool = False) -> None:
        """After a step: queue a fetch on each loop with something urgent (`everyone`: with anything)."""
        with self._lock:
            loops = [loop for loop, box in self._boxes.items()
                     if box.pending and not box.woken and (everyone or box.urgent)]
            for loop in loops:
                self._boxes[loop].woken = True
        for loop in loops:
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                loop.call_soon_threadsafe(self.fetch, loop)

    # -- each event loop's thread ----------------------------------------------------------------------
    def opened(self, stream: TokenStream) -> None:
        """A job of `stream` was submitted: a timely stream's loop fetches on its timer until the stream ends."""
        if not stream.timely:
            return
        with self._lock:
            box = self._box(stream.loop)
        box.open_streams += 1
        if self.seconds and box.timer is None:
            box.timer = stream.loop.call_later(self.seconds, self._tick, stream.loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        box = self._boxes[loop]
        box.timer = None
        self.fetch(loop)
        if box.open_streams:
            box.timer = loop.call_later(self.seconds, self._tick, loop)

    def fetch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand what waits for `loop` to its streams."""
        with self._lock:
            box = self._boxes[loop]
            items, box.pending, box.urgent, box.woken = box.pending, [], False, False
        for stream, token in items:
            stream.queue.put_nowait(token)
            box.open_streams -= token is None and stream.timely


class TokenStream:
    """One job's tokens, handed from the decoder thread to the request's event loop through the Outbox.
    `timely`: its reader uses tokens as they come (a stream, stop strings), not only at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: Outbox, timely: bool = True) -> None:
        self.loop = loop
        self.outbox = outbox
        self.timely = timely
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._started = False

    def on_token(self, token: int) -> bool:
        self.outbox.put(self, token, urgent=self.timely and not self._started)
        self._started = True
        return True

    def on_done(self, job: Job) -> None:
        self.outbox.put(self, None, urgent=True)

    async def __aiter__(self) -> AsyncIterator[int]:
        while (token := await self.queue.get()) is not None:
            yield token

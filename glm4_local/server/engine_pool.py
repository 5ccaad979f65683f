"""Engines behind the front (`serve --engine URL`): llama-servers that decode the token ids the front's
template and tokenizer made, in place of the in-process decoder.

The pool answers the scheduler as a Decoder does (submit, cancel, step, slot counts), so everything above the
scheduler is the same whether tokens come from llama.cpp here or from engines elsewhere. Its own thread runs an
event loop with one task per job; each job's tokens come back to the scheduler's thread in `step()`, where the
job's callbacks hear them, as they hear a Decoder's.

A conversation goes to the engine whose slots hold the longest part of its prompt (llama-server reuses a
slot's cache), else to the least loaded; an engine that fails, or stops answering /health, is taken out, its
jobs ended with a 503 (a job whose reply had begun is never finished elsewhere and passed off as whole), and
tried again with back-off: it comes back once it answers and still runs this model's vocabulary.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glm4_local.chat.runtime import ChatRuntime, Vocabulary
from glm4_local.chat.setup import ModelFacts
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama import door
from glm4_local.core.llama.jobs import Job, common_prefix
from glm4_local.core.llama.sampling import DecodeError
from glm4_local.server import engine_client as ec

HEALTH_SECONDS = 5.0  # how often an engine in use is asked /health
BACKOFF_SECONDS = (1.0, 30.0)  # an engine taken out is tried again after the first, doubling up to the second
SHARED_PREFIX_TOKENS = 64  # a prompt shares a cached prefix with an engine from this many tokens
RECENT_PER_SLOT = 2  # sequences remembered per engine slot, for routing by prefix
START_SECONDS = 120.0  # the first check of every engine (its whole vocabulary) at start


class EnginesDown(Glm4LocalError):
    """No engine can take a job now."""


@dataclass(eq=False)
class Engine:
    url: str
    facts: ec.EngineFacts | None = None
    up: bool = False
    problem: str | None = "not checked yet"  # why it is out (None while up)
    inflight: set[Job] = field(default_factory=set)
    recent: collections.deque[list[int]] = field(default_factory=lambda: collections.deque(maxlen=8))
    requests: int = 0
    failures: int = 0  # times it was taken out
    backoff: float = BACKOFF_SECONDS[0]

    @property
    def slots(self) -> int:
        return self.facts.slots if self.facts else 0

    def shared(self, prompt: list[int]) -> int:
        best = max((common_prefix(seen, prompt) for seen in self.recent), default=0)
        return best if best >= SHARED_PREFIX_TOKENS else 0

    def status(self) -> dict[str, Any]:
        facts = self.facts
        return {"url": self.url, "status": "ok" if self.up else "out", "problem": self.problem,
                "slots": facts.slots if facts else None, "slot_context": facts.slot_ctx if facts else None,
                "busy": len(self.inflight), "requests": self.requests, "failures": self.failures}


class EnginePool:
    """The engines, as the scheduler's decoder."""

    def __init__(self, urls: list[str], vocab: Vocabulary, n_vocab: int, api_key: str | None = None) -> None:
        self.vocab = vocab
        self.n_vocab = n_vocab
        self.engines = [Engine(url.rstrip("/")) for url in urls]
        self.slot_ctx = 0  # set by start(): the least context of the engines' slots
        self.decode_calls = self.decoded_tokens = self.drafted_tokens = self.accepted_tokens = 0  # not seen here
        self.decode_seconds = 0.0
        self._index = ec.PieceIndex(vocab, n_vocab)
        self._events: collections.deque[Callable[[], None]] = collections.deque()  # for the scheduler's thread
        self._ready = threading.Event()
        self._jobs: set[Job] = set()  # submitted and not ended (the scheduler's side)
        self._unsent: set[Job] = set()  # of those, the ones not yet sent to an engine
        self._count_lock = threading.Lock()
        self._tasks: dict[Job, asyncio.Task[None]] = {}  # the pool loop's side
        self._failed: dict[Job, str] = {}  # jobs stopped because their engine went out, and why
        self._stops: dict[Job, int] = {}  # the stop token each ended job met (the pool loop's side)
        self._watchers: list[asyncio.Task[None]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="glm4-local-engines", daemon=True)
        self._thread.start()
        self._client = self._call(self._make_client(api_key))
        self._headers = ec.auth_headers(api_key)

    async def _make_client(self, api_key: str | None) -> Any:
        return ec.http_client(api_key)

    def _call(self, coroutine: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # -- start ------------------------------------------------------------------------------------
    def start(self, warn: Callable[[str], None]) -> None:
        """Check every engine (its model's vocabulary against ours) and start watching them; EngineMismatch
        when one runs another model, EnginesDown when none answers."""
        self._call(self._check_all(), START_SECONDS)
        for engine in self.engines:
            if engine.problem and engine.problem.startswith("runs another model"):
                raise ec.EngineMismatch(f"the engine at {engine.url} {engine.problem}")
        up = [engine for engine in self.engines if engine.up]
        if not up:
            raise EnginesDown("no engine answers: " + "; ".join(f"{e.url} {e.problem}" for e in self.engines))
        self.slot_ctx = min(engine.facts.slot_ctx for engine in up if engine.facts)
        for engine in self.engines:
            if not engine.up:
                warn(f"the engine at {engine.url}: {engine.problem}; it is tried again until it answers")
            self._loop.call_soon_threadsafe(self._watch_soon, engine)

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(engine) for engine in self.engines))

    def _watch_soon(self, engine: Engine) -> None:
        self._watchers.append(self._loop.create_task(self._watch(engine)))

    async def _check(self, engine: Engine) -> None:
        try:
            facts = await ec.engine_facts(self._client, engine.url)
            difference = await ec.vocabulary_difference(self._client, engine.url, self.vocab, self.n_vocab,
                                                         facts.n_vocab)
        except ec.EngineError as e:
            engine.problem = str(e)
            return
        if difference is not None:
            engine.problem = f"runs another model: {difference}"
            return
        engine.facts, engine.up, engine.problem = facts, True, None
        engine.recent = collections.deque(maxlen=max(1, facts.slots * RECENT_PER_SLOT))
        engine.backoff = BACKOFF_SECONDS[0]

    async def _watch(self, engine: Engine) -> None:
        """Ask an engine in use for its health; try one taken out again, with back-off."""
        while True:
            if engine.up:
                await asyncio.sleep(HEALTH_SECONDS)
                if engine.up and not await ec.healthy(self._client, engine.url) \
                        and not await ec.healthy(self._client, engine.url):
                    self._take_out(engine, "stopped answering /health")
            else:
                await asyncio.sleep(engine.backoff)
                engine.backoff = min(engine.backoff * 2, BACKOFF_SECONDS[1])
                await self._check(engine)

    def _take_out(self, engine: Engine, problem: str) -> None:
        if engine.up:
            engine.up, engine.failures = False, engine.failures + 1
        engine.problem = problem
        for job in list(engine.inflight):  # a silent engine's streams may never end by themselves
            self._failed[job] = f"the engine at {engine.url} {problem}"
            if task := self._tasks.get(job):
                task.cancel()

    # -- the decoder's face ---------------------------------------------------------------------------
    @property
    def slot_count(self) -> int:
        return sum(engine.slots for engine in self.engines if engine.up)

    @property
    def active(self) -> int:
        return sum(min(len(engine.inflight), engine.slots) for engine in self.engines)

    @property
    def queued(self) -> int:
        return len(self._unsent) + sum(max(0, len(e.inflight) - e.slots) for e in self.engines)

    def reading(self) -> list[tuple[int, int]]:
        return []  # engines do not tell how far they have read a prompt

    def submit(self, job: Job) -> None:
        if not job.prompt:
            raise DecodeError("an empty prompt")
        if len(job.prompt) >= self.slot_ctx:
            raise DecodeError(f"a prompt of {len(job.prompt)} tokens does not fit the context of {self.slot_ctx}")
        if job.top_logprobs is not None:
            raise DecodeError("log-probabilities are not available through --engine: llama-server's stream leaves "
                              "out the scores of tokens that end inside a character")
        if not any(engine.up for engine in self.engines):
            raise EnginesDown("no engine is answering now")
        room = self.slot_ctx - len(job.prompt)
        job.max_new_tokens = min(job.max_new_tokens, room) if job.max_new_tokens > 0 else room
        with self._count_lock:
            self._jobs.add(job)
            self._unsent.add(job)
        self._loop.call_soon_threadsafe(self._begin, job)

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self._loop.call_soon_threadsafe(self._cancel_task, job)

    def _cancel_task(self, job: Job) -> None:
        if task := self._tasks.get(job):
            task.cancel()

    def cancel_all(self) -> None:
        for job in self._live():
            self.cancel(job)
            self._end(job, "cancelled")

    def _live(self) -> list[Job]:
        with self._count_lock:
            return list(self._jobs)

    def release_cancelled(self) -> None:
        self.step(wait=False)

    def abort(self, message: str) -> None:
        for job in self._live():
            job.error = message
            self.cancel(job)
            self._end(job, "error")

    def request_abort(self) -> None:
        pass  # no step here runs long enough to need stopping inside it

    def prepare(self) -> bool:
        return False  # nothing is read here: a step only hands over what the engines sent

    def step(self, abortable: bool = False, wait: bool = True) -> bool:
        """Hand the engines' news to the jobs' callbacks, in this (the scheduler's) thread; waits up to half a
        second for some. False when there was none."""
        if wait:
            self._ready.wait(0.5)
        self._ready.clear()
        worked = False
        while self._events:
            self._events.popleft()()
            worked = True
        return worked

    def calibrate(self) -> bool:
        """Nothing to measure here: the engines weigh their own steps."""
        return False

    def hold_calibration(self, held: bool) -> None:
        pass  # nothing is measured here

    def close(self) -> None:
        self.cancel_all()
        if self._loop.is_running():
            self._call(self._shutdown(), 10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():  # closed here, not by the garbage collector (which may print a traceback)
            self._loop.close()

    async def _shutdown(self) -> None:
        tasks = [*self._tasks.values(), *self._watchers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    # -- one job, in the pool's loop ----------------------------------------------------------------
    def _post(self, event: Callable[[], None]) -> None:
        self._events.append(event)
        self._ready.set()

    def _begin(self, job: Job) -> None:
        self._tasks[job] = self._loop.create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        tried: set[Engine] = set()
        try:
            while not job.cancelled and (engine := self._choose(job, tried)) is not None:
                tried.add(engine)
                with self._count_lock:
                    self._unsent.discard(job)
                if await self._run_on(engine, job):
                    return
            if job.cancelled:
                self._post(lambda: self._end(job, "cancelled"))
                return
            out = "; ".join(f"{e.url} {e.problem}" for e in self.engines if not e.up)
            self._fail(job, f"no engine could take it ({out or 'none has room for its context'})", 503)
        except asyncio.CancelledError:
            failure = self._failed.pop(job, None)
            if failure is not None:
                self._fail(job, failure, 503)
            else:
                self._post(lambda: self._end(job, "cancelled"))
        finally:
            with self._count_lock:
                self._unsent.discard(job)
            self._tasks.pop(job, None)

    async def _run_on(self, engine: Engine, job: Job) -> bool:
        """Run `job` on `engine`; False when the engine failed before the reply began (another may take it)."""
        engine.inflight.add(job)
        engine.requests += 1
        job.started_at = job.started_at or time.perf_counter()
        tokens: list[int] = []
        try:
            finish = await ec.generate(engine.url, self._headers, job, job.max_new_tokens, ec.TokenRelay(self._index),
                                       lambda given: self._hand_over(job, given, tokens))
        except ec.EngineError as e:
            engine.inflight.discard(job)  # taking the engine out stops the jobs on it: not this one, yet
            self._take_out(engine, str(e))
            if not e.started:
                return False
            self._fail(job, f"the engine at {engine.url} {e}", 503)
            return True
        except ec.EngineRefused as e:
            self._fail(job, str(e), 400)
            return True
        finally:
            engine.inflight.discard(job)
            stop = self._stops.pop(job, None)
            engine.recent.append(job.prompt + tokens + ([stop] if stop is not None else []))
        if finish.evaluated is not None:
            job.evaluated_tokens = finish.evaluated
        # a stop token (handed over already), or the limit: ours or the engine's
        reason = "stop" if stop is not None or finish.reason in ("eos", "word") else "length"
        self._post(lambda: self._end(job, reason))
        return True

    def _hand_over(self, job: Job, given: list[int], taken: list[int]) -> bool:
        """Pass a chunk's tokens on (in the pool's loop). A stop token ends the job; the engine, whose end of
        generation tokens include ours in a GGUF of ours, stops there too and sends its last chunk. False
        (stop reading: the connection closes) when it goes on past a stop token or the limit."""
        now = time.perf_counter()
        job.first_token_at = job.first_token_at or now
        job.last_token_at = now
        for token in given:
            if job in self._stops or len(taken) >= job.max_new_tokens:
                return False
            if token in job.stop_ids:
                self._stops[job] = token
                self._post(lambda token=token: self._stopped(job, token))
                continue
            taken.append(token)
            self._post(lambda token=token: self._take(job, token))
        return True

    def _choose(self, job: Job, tried: set[Engine]) -> Engine | None:
        """The engine holding the longest prefix of the prompt among those with a free slot (else among all),
        the least loaded where none holds one."""
        need = len(job.prompt) + 1
        usable = [e for e in self.engines if e.up and e not in tried and e.facts and e.facts.slot_ctx >= need]
        free = [e for e in usable if len(e.inflight) < e.slots]
        return max(free or usable, key=lambda e: (e.shared(job.prompt), -len(e.inflight) / e.slots, -e.requests),
                   default=None)

    def _fail(self, job: Job, message: str, status: int) -> None:
        def end() -> None:
            job.error, job.error_status = message, status
            self._end(job, "error")

        self._post(end)

    # -- in the scheduler's thread ------------------------------------------------------------------
    @staticmethod
    def _take(job: Job, token: int) -> None:
        if not job.done:
            job.generated.append(token)
            if job.on_token is not None:
                job.on_token(token)

    def _stopped(self, job: Job, token: int) -> None:
        if not job.done:
            job.stop_token = token
            self._end(job, "stop")

    def _end(self, job: Job, reason: str) -> None:
        if job.done:
            return
        with self._count_lock:
            self._jobs.discard(job)
        job.finish = reason
        if job.on_done:
            job.on_done(job)

    def status(self) -> list[dict[str, Any]]:
        return [engine.status() for engine in self.engines]


def engine_runtime(facts: ModelFacts, urls: list[str], api_key: str | None, warn: Callable[[str], None]
                   ) -> ChatRuntime:
    """The front's runtime: this GGUF's vocabulary alone (the engines hold the weights), and the engines, checked
    to run the same vocabulary, as its decoder."""
    model = door.load_model(facts.path, header=facts.header, vocab_only=True)
    vocab = Vocabulary(model, facts.family)
    pool = EnginePool(urls, vocab, model.n_vocab(), api_key)
    try:
        pool.start(warn)
    except BaseException:
        pool.close()
        raise
    return ChatRuntime(vocab, pool, 0.0, facts.hparams.context_length)

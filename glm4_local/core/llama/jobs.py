"""What the decoder works on: jobs (one generation each) and the slots (sequences) that run them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from glm4_local.core.llama.logprobs import TokenLogprob
from glm4_local.core.llama.sampling import Sampler, SamplerSettings
from glm4_local.core.llama.speculation import Drafter


class DecodeAborted(KeyboardInterrupt):
    """A prompt batch stopped inside llama.cpp at the user's request; the slots are as before it."""


@dataclass(eq=False)
class Job:
    """One generation: a prompt to continue, how to sample it and when to stop.

    `on_token(token)` hears each generated token that is not a stop token (in the stepping thread);
    returning False ends the job (finish "stop"). `on_done(job)` hears the end, whatever it was.
    """

    prompt: list[int]
    sampling: SamplerSettings
    max_new_tokens: int
    stop_ids: frozenset[int]
    on_token: Callable[[int], bool] | None = None
    on_done: Callable[[Job], None] | None = None
    generated: list[int] = field(default_factory=list)
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error"
    stop_token: int | None = None  # the stop token that ended it
    error: str | None = None
    error_status: int = 500  # the HTTP status a server answers an error with (503: no engine could run it)
    evaluated_tokens: int = 0  # prompt tokens computed (the rest came from the cache)
    prompt_done: int = 0  # of those, how many are computed so far (progress while a long prompt is read)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0  # when it got a slot
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    cancelled: bool = False
    drafted: int = 0  # tokens proposed by prompt lookup, and of those, accepted (speculation)
    accepted: int = 0
    watched: bool = True  # someone reads it as it comes (a stream): it gets a free slot before those nobody does
    top_logprobs: int | None = None  # None: no log-probabilities; else each sampled token's (the stop token
    # that ends the job too), with this many likeliest alternatives, in `logprobs`, before on_token hears it
    echo_logprobs: bool = False  # the prompt's tokens' too, in `prompt_logprobs` (the prompt is read whole)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # of prompt[1:] (the first has none)

    @property
    def done(self) -> bool:
        return self.finish is not None


@dataclass(eq=False)
class Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose keys/values this sequence holds
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # tokens to evaluate next
    sampler: Sampler | None = None
    drafter: Drafter | None = None  # None: this job does not speculate
    used_at: float = 0.0
    on_disk: int = 0  # of `cached`, how many tokens the prompt cache on disk already holds


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Decoding(Protocol):
    """What runs jobs, as the chat, the scheduler and the server's routes use it: the Decoder here, or the
    server's pool of engines elsewhere (`serve --engine`)."""

    slot_ctx: int  # tokens of context one job has
    n_vocab: int
    decode_calls: int  # for /metrics: llama_decode calls and what they carried (0 where they are not seen)
    decoded_tokens: int
    decode_seconds: float
    drafted_tokens: int
    accepted_tokens: int

    @property
    def slot_count(self) -> int: ...
    @property
    def active(self) -> int: ...
    @property
    def queued(self) -> int: ...
    def submit(self, job: Job) -> None: ...
    def cancel(self, job: Job) -> None: ...
    def cancel_all(self) -> None: ...
    def release_cancelled(self) -> None: ...
    def abort(self, message: str) -> None: ...
    def prepare(self) -> bool: ...
    def step(self, abortable: bool = False) -> bool: ...
    def request_abort(self) -> None: ...
    def calibrate(self) -> bool: ...
    def hold_calibration(self, held: bool) -> None: ...
    def reading(self) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...

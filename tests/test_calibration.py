"""Step costs measured while the decoder is idle: every size a draft can make, known before the first reply
weighs one; a job arriving stops the measuring step inside llama.cpp; the slots' caches stay exact."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.step_costs import ComputeBound

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import ChatRuntime
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.llama.calibration import Calibration
from glm4_local.core.llama.decoder import Decoder, Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.core.llama.speculation import SpeculationSettings, StepCosts

GREEDY = SamplerSettings()
DRAFTS = SpeculationSettings("auto", 6)


def decoder_of(path: Path, speculation: SpeculationSettings = DRAFTS, slots: int = 2) -> Decoder:
    options = RuntimeOptions(ctx=256, threads=2, speculation=speculation)
    decoder = load_runtime(ModelFacts.read(path), options, slots=slots).decoder
    assert isinstance(decoder, Decoder)
    return decoder


def run(decoder: Decoder, job: Job, submitted: bool = False) -> tuple[list[int], str | None, int]:
    """The job's tokens, how it ended, and how many prompt tokens it read (not taken from a cache)."""
    if not submitted:
        decoder.submit(job)
    while decoder.has_work():
        decoder.step()
    return job.generated, job.finish, job.evaluated_tokens


def calibrated(decoder: Decoder) -> int:
    steps = 0
    while decoder.calibrate():
        steps += 1
    return steps


class Spy:
    """llama_cpp as the decoder sees it, with `before_decode` run before each llama_decode (counted)."""

    def __init__(self, ll: Any, before_decode: Callable[[], None] = lambda: None) -> None:
        self._ll, self.before_decode, self.decodes = ll, before_decode, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ll, name)

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        self.decodes += 1
        self.before_decode()
        return self._ll.llama_decode(ctx, batch)


def test_the_first_step_is_a_warm_up_and_every_size_after_it_is_kept() -> None:
    calibration, costs = Calibration(3), StepCosts()
    for seconds in (9.0, 0.01, 0.02, 0.03):  # the first read the weights from disk
        assert calibration.next_size is not None
        calibration.measured(seconds, costs)
    assert calibration.next_size is None and costs.sizes == {1, 2, 3} and costs.cost(1) == 0.01
    assert Calibration(0).next_size is None


def test_an_idle_decoder_measures_every_size_a_draft_makes_and_its_caches_stay_exact(
        make_gguf: Callable[..., Path]) -> None:
    """A conversation's slot keeps its cache through the measuring steps (taken past it, then removed): the
    next turn reads only its new tokens and gets the tokens a decoder that measured nothing gets."""
    path = make_gguf("f32")
    first = Job([5, 6, 7, 8, 9], GREEDY, 6, frozenset())
    measuring, plain = decoder_of(path), decoder_of(path)
    assert measuring.step_costs.sizes == set()
    run(measuring, first)
    run(plain, Job(list(first.prompt), GREEDY, 6, frozenset()))
    assert calibrated(measuring) == 1 + 7  # the warm-up, then 1 token and 1 + 6 drafted
    assert measuring.step_costs.sizes >= set(range(1, 8)) and not measuring.calibrate()
    follow_up = [*first.prompt, *first.generated, 11, 12, 13]
    tokens, finish, read = run(measuring, Job(follow_up, GREEDY, 20, frozenset()))
    assert (tokens, finish, read) == run(plain, Job(list(follow_up), GREEDY, 20, frozenset()))
    assert read == 4  # the three new, and the first reply's last token (sampled, never decoded)


def test_a_job_arriving_stops_the_measuring_step_and_is_served_exactly(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf("f32")
    decoder = decoder_of(path)
    job = Job([3, 1, 4, 1, 5, 9, 2, 6], GREEDY, 12, frozenset())
    spy = decoder._ll = Spy(decoder._ll, lambda: decoder.submit(job))  # arrives as the step begins
    assert not decoder.calibrate() and spy.decodes == 1
    assert decoder.calibration.next_size == 1 and decoder.step_costs.sizes == set()  # nothing kept: it stopped
    spy.before_decode = lambda: None
    assert not decoder.calibrate() and spy.decodes == 1  # a job waits: nothing is measured
    tokens, finish, _ = run(decoder, job, submitted=True)
    assert (tokens, finish) == run(decoder_of(path), Job(list(job.prompt), GREEDY, 12, frozenset()))[:2]
    assert calibrated(decoder) == 8  # measured once idle again, and the stop asked for is spent


class Refusing(Spy):
    """llama_decode answering 1 ("no room in the KV cache") without computing."""

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        self.decodes += 1
        return 1


def test_a_measuring_step_llama_cpp_refuses_is_not_tried_again(make_gguf: Callable[..., Path]) -> None:
    decoder = decoder_of(make_gguf("f32"))
    spy = decoder._ll = Refusing(decoder._ll)
    assert not decoder.calibrate() and decoder.calibration.next_size is None
    assert not decoder.calibrate() and spy.decodes == 1 and decoder.step_costs.sizes == set()


def test_without_drafts_nothing_is_measured(make_gguf: Callable[..., Path]) -> None:
    decoder = decoder_of(make_gguf("f32"), SpeculationSettings("off"))
    spy = decoder._ll = Spy(decoder._ll)
    assert calibrated(decoder) == 0 and spy.decodes == 0


def test_where_drafts_cannot_pay_a_new_decoder_that_measured_first_sends_none(make_gguf: Callable[..., Path]) -> None:
    """On a compute-bound machine (a drafted token costs what a step saves) a decoder's first replies to
    repeating text sent drafts while its step sizes were unknown; measured while idle, it sends none."""
    path = make_gguf("f32")
    rng = random.Random(3)
    phrases = [[rng.randrange(1, 300) for _ in range(rng.randrange(3, 8))] for _ in range(3)]
    drafted = {}
    for measure in (False, True):
        decoder = decoder_of(path, slots=1)
        decoder.step_costs = ComputeBound()
        if measure:
            calibrated(decoder)
        for phrase in phrases:
            run(decoder, Job(phrase * 4, GREEDY, 30, frozenset()))
        drafted[measure] = decoder.drafted_tokens
    assert drafted[False] > 0 and drafted[True] == 0


class Watched(Calibration):
    """Says when every size is measured."""

    def __init__(self, largest: int) -> None:
        super().__init__(largest)
        self.done = threading.Event()

    def measured(self, seconds: float, costs: StepCosts) -> None:
        super().measured(seconds, costs)
        if self.next_size is None:
            self.done.set()


def chat_runtime(path: Path) -> ChatRuntime:
    return load_runtime(ModelFacts.read(path), RuntimeOptions(ctx=256, threads=2, speculation=DRAFTS), slots=1)


def test_the_chat_measures_while_the_user_writes(make_gguf: Callable[..., Path]) -> None:
    runtime = chat_runtime(make_gguf("f32"))
    decoder = runtime.decoder
    assert isinstance(decoder, Decoder)
    decoder.calibration = Watched(7)
    with runtime.idle():
        assert decoder.calibration.done.wait(60)
    assert decoder.step_costs.sizes >= set(range(1, 8)) and not decoder.calibrate()  # held once the user sent


def test_a_message_sent_stops_the_measuring_step_and_the_reply_is_exact(make_gguf: Callable[..., Path]) -> None:
    """The user sends while a step is being measured: the step stops inside llama.cpp, nothing of it is kept, and
    the stop it asked for is spent (the reply's own abortable prompt batch runs whole)."""
    path = make_gguf("f32")
    runtime = chat_runtime(path)
    decoder = runtime.decoder
    assert isinstance(decoder, Decoder)
    started, asked_to_stop = threading.Event(), []

    def until_stopped() -> None:
        started.set()
        asked_to_stop.append(decoder._abort.wait(60))  # the block's end asks the step to stop

    decoder._ll = Spy(decoder._ll, until_stopped)
    with runtime.idle():
        assert started.wait(60)
    assert asked_to_stop == [True] and decoder.step_costs.sizes == set() and decoder.calibration.next_size == 1
    assert not decoder._abort.is_set()  # spent: the reply's own abortable batch is not stopped by it
    decoder._ll.before_decode = lambda: None
    job = Job([3, 1, 4, 1, 5, 9, 2, 6], GREEDY, 12, frozenset())
    decoder.submit(job)
    while decoder.has_work():
        decoder.step(abortable=True)
    fresh = chat_runtime(path).decoder
    assert isinstance(fresh, Decoder)
    assert (job.generated, job.finish) == run(fresh, Job(list(job.prompt), GREEDY, 12, frozenset()))[:2]

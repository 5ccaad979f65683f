"""Prompt-lookup speculation in the shared decoder: the same tokens as without it, fewer llama_decode calls
where the reply repeats its context, and every way a job ends still exact."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.step_costs import ComputeBound

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import ChatRuntime
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.llama.decoder import Decoder, Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.core.llama.speculation import (
    NGRAM_MAX,
    NGRAM_MIN,
    Acceptance,
    Drafter,
    Promises,
    SpeculationSettings,
    StepCosts,
    speculation_of,
)

OFF = SpeculationSettings("off")
WORDS = tuple(f" w{i:02d}" for i in range(40))  # a passage the scripted model recites, word by word
PASSAGE_SCRIPT = (("<|assistant|>", "\n"), ("\n", WORDS[0]), *itertools.pairwise(WORDS),
                  (WORDS[-1], "<|user|>"))
GREEDY = SamplerSettings()


def runtime(path: Path, speculation: SpeculationSettings, slots: int = 1, ctx: int = 512,
            shared_kv: bool = False) -> ChatRuntime:
    options = RuntimeOptions(ctx=ctx, threads=2, speculation=speculation)
    return load_runtime(ModelFacts.read(path), options, slots=slots, shared_kv=shared_kv)


def run_all(decoder: Decoder, jobs: list[Job]) -> None:
    for job in jobs:
        decoder.submit(job)
    while decoder.has_work():
        decoder.step()


def copies(jobs: list[Job]) -> list[Job]:
    return [Job(list(j.prompt), j.sampling, j.max_new_tokens, j.stop_ids) for j in jobs]


def outcome(job: Job) -> tuple:
    return job.generated, job.finish, job.stop_token, job.error


@pytest.fixture(scope="module")
def passage_gguf(make_gguf: Callable[..., Path]) -> Path:
    return make_gguf("f32", dtype="f32", extra_tokens=WORDS, script=PASSAGE_SCRIPT)


def passage_ids(rt: ChatRuntime) -> tuple[list[int], int, int, int]:
    """(the passage's tokens, <|assistant|>, <|user|>, \\n) in this model's vocabulary."""
    ids = {rt.vocab.piece(i): i for i in range(rt.decoder.n_vocab)}  # the words are tokens BPE never forms
    special = rt.vocab.special_ids
    return ([ids[w.encode()] for w in WORDS], special["<|assistant|>"], special["<|user|>"],
            rt.vocab.text_tokens("\n")[0])


# -- drafting on its own -------------------------------------------------------------------------------
def test_a_draft_is_what_followed_the_latest_longest_match() -> None:
    assert Drafter([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3], SpeculationSettings()).draft(5) == [4, 5, 6, 7, 8]
    assert Drafter([1, 2, 3, 9, 2, 3, 4, 5, 1, 2, 3], SpeculationSettings()).draft(3) == [9, 2, 3]  # 3-gram wins
    assert Drafter([5, 2, 3, 8, 6, 2, 3], SpeculationSettings()).draft(3) == [8, 6, 2]
    assert Drafter([7, 7, 7, 7], SpeculationSettings()).draft(6) == [7] * 6  # a copy runs on into itself
    assert Drafter([1, 2, 3, 4, 3], SpeculationSettings()).draft(4) == []  # one token is no match
    assert Drafter([1, 2, 1, 2], SpeculationSettings("auto", 2)).draft(10) == [1, 2]  # length ≤ draft_max


def test_drafts_follow_the_latest_longest_match_as_the_context_grows() -> None:
    """The drafter's index of earlier n-grams, kept up as tokens come in runs of any length, finds what a scan
    of the whole context finds (small vocabularies: matches everywhere, of every length), asked for a draft
    after every run or only now and then (while other replies generate beside it)."""

    def scanned(tokens: list[int], limit: int) -> list[int]:
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            for end in range(len(tokens) - 2, n - 2, -1):  # earlier occurrences, the latest first
                if len(tokens) > n and tokens[end - n + 1 : end + 1] == tokens[-n:]:
                    follows = tokens[end + 1 :]
                    return [follows[i % len(follows)] for i in range(limit)]
        return []

    rng = random.Random(7)
    for vocabulary, asked in itertools.product((2, 3, 5, 40), (1.0, 0.2)):
        tokens = [rng.randrange(vocabulary) for _ in range(rng.randrange(1, 12))]
        drafter = Drafter(tokens, SpeculationSettings("auto", 6), Acceptance(1.0, 0.0))  # p = 1: drafts sent whole
        for _ in range(60):
            if rng.random() < asked:
                assert drafter.draft(6) == scanned(tokens, 6)
            more = [rng.randrange(vocabulary) for _ in range(rng.randrange(1, 5))]
            drafter.extend(more)
            tokens += more


def costing(share: float) -> Callable[[int], float]:
    """Drafted tokens that each cost `share` of what an accepted one saves (1 s)."""
    return lambda k: share * k


def test_a_draft_runs_while_its_tokens_are_kept_often_enough() -> None:
    drafter = Drafter([1, 2, 1, 2] * 8, SpeculationSettings("auto", 16))
    assert drafter.acceptance.p == 0.75 and len(drafter.draft(100)) == 8  # 0.75^8 ≥ MIN_WORTH > 0.75^9
    drafter.record(8, 8)
    assert len(drafter.draft(100)) == 16  # taken whole: as long as allowed
    p = drafter.acceptance.p
    worth = len(drafter.draft(100, 1.0, costing(0.9)))  # each drafted token must be kept 90% of the time
    assert 0 < worth < 16 and p**worth >= 0.9 > p ** (worth + 1)


def test_drafts_that_keep_failing_become_shadows_until_the_text_repeats_again() -> None:
    drafter = Drafter([1, 2, 1, 2] * 8, SpeculationSettings("auto", 16))
    for _ in range(3):  # three drafts in a row whose first token was wrong, where a token must earn half
        drafter.record(4, 0)
    assert drafter.draft(100, 1.0, costing(0.5)) == [] and drafter.shadow == [1, 2] * 8  # not sent: scored later
    assert drafter.draft(100, 1.0, costing(0.5)) == [] and drafter.shadow == [1, 2] * 8  # one shadow at a time
    drafter.extend([1, 2] * 8)  # it would have been accepted whole
    assert drafter.shadow == [] and drafter.draft(100, 1.0, costing(0.5))[:2] == [1, 2]  # sent again


def test_a_shadow_that_misses_is_scored_at_the_first_token_it_got_wrong() -> None:
    drafter = Drafter([5, 6, 7, 8, 5, 6], SpeculationSettings(), Acceptance(0.0, 1.0))
    assert drafter.draft(100) == [] and drafter.shadow == [7, 8, 5, 6] * 4
    drafter.extend([7, 8, 9])
    assert drafter.shadow == []
    # from the prior (0 hits, 4 misses): two hits, then a miss, each older token worth 0.9 of the next
    hits, misses = (1.0 * 0.9 + 1.0) * 0.9, 4.0 * 0.9**3 + 1.0
    assert drafter.acceptance.p == pytest.approx(hits / (hits + misses))


def test_a_new_job_starts_from_what_its_decoders_drafts_earned() -> None:
    shared = Acceptance()
    assert Drafter([1, 2, 1, 2], SpeculationSettings(), shared).draft(4) == [1, 2, 1, 2]  # nothing seen yet
    for _ in range(60):
        shared.score(0, missed=True)  # matched continuations lately wrong from their first token
    newcomer = Drafter([1, 2, 1, 2], SpeculationSettings(), shared)
    assert newcomer.draft(4) == [] and newcomer.shadow == [1, 2, 1, 2]
    drafter = Drafter([1, 2] * 8, SpeculationSettings(), Acceptance(9.0, 1.0))  # right 90% of the time
    assert len(drafter.draft(16, 1.0, costing(0.5))) == 6  # 0.9^6 ≥ 0.5 > 0.9^7
    assert drafter.draft(16, 1.0, costing(0.95)) == [] and drafter.shadow  # not even one pays


def test_drafts_that_keep_less_than_their_estimate_promised_are_trusted_less() -> None:
    """An estimate is acted on at its peaks, so what sent drafts keep against what it promised scales what a kept
    token is worth, decoder-wide; drafts that keep their promise (a passage being copied) win the trust back."""
    promises = Promises()
    assert promises.factor == 1.0

    def drafter() -> Drafter:
        return Drafter([1, 2] * 8, SpeculationSettings(), Acceptance(9.0, 1.0), promises)  # p = 0.9 to start

    first = drafter()
    assert len(first.draft(16, 1.0, costing(0.5))) == 6  # 0.9^6 ≥ 0.5 > 0.9^7, as without promises
    first.settle(6, 0)
    promised = sum(0.9**k for k in range(1, 7))
    assert (promises.promised, promises.kept) == pytest.approx((0.9 * 4.0 + promised, 0.9 * 4.0))
    for _ in range(3):
        sent = drafter()
        assert sent.draft(16, 1.0, costing(0.0))  # free: sent however little it is trusted
        sent.settle(6, 1)  # six of its tokens, sent at p = 0.9, promised 3.7 kept; one was
    assert promises.factor == 0.5  # the least it is trusted
    later = drafter()
    assert later.draft(16, 1.0, costing(0.5)) == [] and later.shadow  # 0.5 × 0.9 of a step < half a step
    assert len(drafter().draft(16, 1.0, costing(0.4))) == 2  # 0.5 × 0.9² ≥ 0.4 > 0.5 × 0.9³
    copying = Drafter([1, 2] * 8, SpeculationSettings(), Acceptance(1.0, 0.0), promises)  # p = 1
    for _ in range(12):
        assert len(copying.draft(16, 1.0, costing(0.4))) == 16
        copying.settle(16, 16)
        copying.extend([1, 2] * 8)
    assert promises.factor > 0.95 and len(drafter().draft(16, 1.0, costing(0.5))) == 6


def test_shadows_that_keep_their_promise_win_the_trust_back() -> None:
    """Trust lost to early misses: scored on sent drafts alone, it never came back (no draft was sent to win it
    back) and a reply that went on to copy its own lines drafted no more. A shadow keeps its promise or breaks it
    as a sent draft does."""
    promises = Promises(promised=8.0, kept=0.0)
    assert promises.factor == 0.5  # the least it is trusted
    drafter = Drafter([1, 2] * 8, SpeculationSettings(), Acceptance(9.0, 1.0), promises)  # p = 0.9
    assert drafter.draft(16, 1.0, costing(0.5)) == [] and drafter.shadow == [1, 2] * 8
    drafter.extend([1, 2] * 8)  # the reply copies on, as the shadow said
    assert drafter.shadow == [] and promises.factor == 1.0  # kept more than the 7.4 promised
    assert len(drafter.draft(16, 1.0, costing(0.5))) == 16
    trusted = Promises()
    misses = Drafter([1, 2] * 8, SpeculationSettings(), Acceptance(9.0, 1.0), trusted)
    assert misses.draft(16, 1.0, costing(0.95)) == [] and misses.shadow  # a token must be kept 95% of the time
    misses.extend([3])  # the shadow was wrong at once
    assert trusted.factor < 1.0


def test_the_cli_words_for_speculation() -> None:
    assert speculation_of("off").enabled is False and speculation_of("auto", 4).draft_max == 4
    assert speculation_of("auto", 0).enabled is False
    with pytest.raises(ValueError, match="auto, off"):
        speculation_of("always")


# -- greedy equivalence ------------------------------------------------------------------------------------
def test_random_model_greedy_tokens_are_identical_with_and_without_speculation(make_gguf: Callable[..., Path]) -> None:
    """Prompts that repeat themselves (so drafts are proposed, and mostly rejected by a random model),
    four slots decoded together: the same tokens and endings as without speculation."""
    path = make_gguf("f32")
    rng = random.Random(3)
    jobs = []
    for i in range(12):
        phrase = [rng.randrange(1, 300) for _ in range(rng.randrange(3, 12))]
        jobs.append(Job(phrase * rng.randrange(2, 6) + phrase[: i % 4], GREEDY, rng.randrange(8, 60), frozenset()))
    plain, fast = runtime(path, OFF, slots=4), runtime(path, SpeculationSettings(), slots=4)
    expected, got = copies(jobs), copies(jobs)
    run_all(plain.decoder, expected)
    run_all(fast.decoder, got)
    assert [outcome(j) for j in got] == [outcome(j) for j in expected]
    assert fast.decoder.drafted_tokens > 0 and plain.decoder.drafted_tokens == 0


def test_where_drafts_cannot_pay_none_is_sent_and_the_tokens_are_unchanged(make_gguf: Callable[..., Path]) -> None:
    """Step costs of a compute-bound CPU (a drafted token costs what a plain one does) and drafts that earned
    half lately: every draft of four random sequences decoding together stays a shadow."""
    path = make_gguf("f32")
    rng = random.Random(5)
    jobs = []
    for _ in range(8):
        phrase = [rng.randrange(1, 300) for _ in range(rng.randrange(3, 8))]
        jobs.append(Job(phrase * 4, GREEDY, 40, frozenset()))
    # one KV buffer for all: there drafts are weighed by the step costs (in buffers of their own none is sent)
    plain, fast = runtime(path, OFF, slots=4), runtime(path, SpeculationSettings(), slots=4, shared_kv=True)
    fast.decoder.step_costs = ComputeBound()
    for n in (1, 2, 4, 8, 3):
        fast.decoder.step_costs.observe(n, 0.0)
    fast.decoder.acceptance.hits = fast.decoder.acceptance.misses = 2.0
    expected, got = copies(jobs), copies(jobs)
    run_all(plain.decoder, expected)
    run_all(fast.decoder, got)
    assert [outcome(j) for j in got] == [outcome(j) for j in expected]
    assert fast.decoder.drafted_tokens == 0 and fast.decoder.acceptance.hits != 2.0  # shadows were scored


def test_a_recited_passage_is_accepted_in_few_steps_and_identical(passage_gguf: Path) -> None:
    plain, fast = runtime(passage_gguf, OFF), runtime(passage_gguf, SpeculationSettings())
    passage, assistant, user, newline = passage_ids(fast)
    prompt = [7, 8, *passage, user, 9, assistant]
    stops = frozenset({user})
    expected, got = Job(prompt, GREEDY, 100, stops), Job(prompt, GREEDY, 100, stops)
    run_all(plain.decoder, [expected])
    calls = fast.decoder.decode_calls
    run_all(fast.decoder, [got])
    assert outcome(got) == outcome(expected) == ([newline, *passage], "stop", user, None)
    assert got.accepted >= len(passage) - 4  # (what the draft held after the stop token counts as rejected)
    assert fast.decoder.decode_calls - calls <= 8  # the prompt, then drafts of 8 and 16 (not 41 steps)


def test_a_reply_that_starts_in_shadow_drafts_once_it_repeats_its_prompt(passage_gguf: Path) -> None:
    """A decoder whose drafts earned nothing lately starts the next reply with shadows; the recited
    passage earns its drafts back within two shadows, and the tokens are those decoded one by one."""
    plain, fast = runtime(passage_gguf, OFF), runtime(passage_gguf, SpeculationSettings())
    fast.decoder.acceptance.hits, fast.decoder.acceptance.misses = 0.0, 4.0
    passage, assistant, user, newline = passage_ids(fast)
    prompt = [7, 8, *passage, user, 9, assistant]
    expected, got = Job(prompt, GREEDY, 100, frozenset({user})), Job(prompt, GREEDY, 100, frozenset({user}))
    run_all(plain.decoder, [expected])
    calls = fast.decoder.decode_calls
    run_all(fast.decoder, [got])
    assert outcome(got) == outcome(expected) == ([newline, *passage], "stop", user, None)
    assert got.accepted > 0 and fast.decoder.decode_calls - calls <= 1 + 1 + 8 + 16 + 2  # prompt, shadows, sent


def test_seeded_sampling_draws_the_same_tokens_with_and_without_speculation(passage_gguf: Path) -> None:
    """Each emitted token is one draw of the job's own sampler chain from the same logits, so a seeded
    sampled reply (here of a recited passage, where most drafts are accepted) does not change at all."""
    plain, fast = runtime(passage_gguf, OFF), runtime(passage_gguf, SpeculationSettings())
    passage, assistant, user, _ = passage_ids(fast)
    prompt = [*passage, user, assistant]
    for seed in range(3):
        sampling = SamplerSettings(temperature=0.9, top_p=0.95, seed=seed)
        expected, got = Job(prompt, sampling, 60, frozenset()), Job(prompt, sampling, 60, frozenset())
        run_all(plain.decoder, [expected])
        run_all(fast.decoder, [got])
        assert outcome(got) == outcome(expected)
        assert got.accepted > 20


# -- how jobs end ----------------------------------------------------------------------------------------
def test_log_probabilities_of_accepted_drafts_equal_those_decoded_one_by_one(passage_gguf: Path) -> None:
    """Each accepted token's log-probability is read from its own row of the verifying batch's logits."""
    plain, fast = runtime(passage_gguf, OFF), runtime(passage_gguf, SpeculationSettings())
    passage, assistant, user, _ = passage_ids(fast)
    prompt = [7, 8, *passage, user, 9, assistant]
    expected = Job(prompt, GREEDY, 100, frozenset({user}), top_logprobs=2)
    got = Job(prompt, GREEDY, 100, frozenset({user}), top_logprobs=2)
    run_all(plain.decoder, [expected])
    run_all(fast.decoder, [got])
    assert got.accepted > 20 and got.generated == expected.generated
    assert [e.token for e in got.logprobs] == [*got.generated, user]  # the stop token is scored too
    for mine, theirs in zip(got.logprobs, expected.logprobs, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=2e-3)
        assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]


def test_a_stop_token_inside_an_accepted_draft_ends_the_reply_there(passage_gguf: Path) -> None:
    """The prompt holds the passage followed by <|user|>, so the draft carries the stop token: the
    reply ends at it, and the stop token is neither emitted nor kept in the slot's cache."""
    fast = runtime(passage_gguf, SpeculationSettings())
    passage, assistant, user, newline = passage_ids(fast)
    prompt = [assistant, newline, *passage, user, 5, assistant]
    job = Job(prompt, GREEDY, 200, frozenset({user}))
    run_all(fast.decoder, [job])
    assert outcome(job) == ([newline, *passage], "stop", user, None) and job.accepted > 0
    slot = fast.decoder._slots[0]
    assert slot.cached == prompt + job.generated  # exactly what the KV cache holds: no rejected draft left
    follow = Job(prompt + job.generated + [user, 6, assistant], GREEDY, 5, frozenset())
    run_all(fast.decoder, [follow])
    assert follow.evaluated_tokens == 3  # the next turn reuses that cache


def test_on_token_refusing_mid_draft_ends_the_reply_at_that_token(passage_gguf: Path) -> None:
    fast = runtime(passage_gguf, SpeculationSettings())
    passage, assistant, user, newline = passage_ids(fast)
    heard: list[int] = []
    job = Job([*passage, user, assistant], GREEDY, 200, frozenset({user}),
              on_token=lambda t: heard.append(t) or len(heard) < 20)
    run_all(fast.decoder, [job])
    assert heard == job.generated == [newline, *passage[:19]] and job.finish == "stop"


@pytest.mark.parametrize("max_tokens", [1, 2, 9, 17, 30])
def test_max_tokens_and_a_full_context_end_a_draft_exactly(passage_gguf: Path, max_tokens: int) -> None:
    fast, plain = runtime(passage_gguf, SpeculationSettings(), ctx=64), runtime(passage_gguf, OFF, ctx=64)
    passage, assistant, user, _ = passage_ids(fast)
    limited = [Job([*passage, user, assistant], GREEDY, max_tokens, frozenset({user}))]
    full = [Job([*passage[:10], *passage, user, assistant], GREEDY, 0, frozenset({user}))]  # 10 tokens of room
    for jobs in (limited, full):
        expected, got = copies(jobs), copies(jobs)
        run_all(plain.decoder, expected)
        run_all(fast.decoder, got)
        assert [outcome(j) for j in got] == [outcome(j) for j in expected]
        assert all(j.finish == "length" for j in got)
    assert len(full[0].prompt) + len(got[0].generated) == fast.decoder.slot_ctx


def test_grammar_constrained_drafts_are_cut_where_the_grammar_refuses(passage_gguf: Path) -> None:
    fast, plain = runtime(passage_gguf, SpeculationSettings()), runtime(passage_gguf, OFF)
    passage, assistant, user, _ = passage_ids(fast)
    # the grammar allows the first ten words and then only w00: the model's w10 is refused
    grammar = 'root ::= "\\n"' + "".join(f' "{w}"' for w in WORDS[:10]) + ' " w00"*'
    sampling = SamplerSettings(grammar=grammar)
    jobs = [Job([*passage, user, assistant], sampling, 20, frozenset({user}))]
    expected, got = copies(jobs), copies(jobs)
    run_all(plain.decoder, expected)
    run_all(fast.decoder, got)
    assert outcome(got[0]) == outcome(expected[0])
    assert got[0].generated[1:11] == passage[:10] and got[0].generated[11] != passage[10]
    assert got[0].drafted > 0


def test_cancelling_a_job_while_it_drafts_frees_the_slot_and_its_cache_stays_exact(passage_gguf: Path) -> None:
    fast = runtime(passage_gguf, SpeculationSettings())
    passage, assistant, user, _ = passage_ids(fast)
    prompt = [*passage, user, assistant]
    job = Job(prompt, GREEDY, 200, frozenset({user}))
    fast.decoder.submit(job)
    while job.accepted == 0:
        fast.decoder.step()
    fast.decoder.cancel(job)
    fast.decoder.release_cancelled()
    assert job.finish == "cancelled" and fast.decoder.active == 0
    slot = fast.decoder._slots[0]
    assert slot.cached == (prompt + job.generated)[: len(slot.cached)]
    again = Job(prompt, GREEDY, 200, frozenset({user}))
    run_all(fast.decoder, [again])
    plain = runtime(passage_gguf, OFF)
    reference = Job(prompt, GREEDY, 200, frozenset({user}))
    run_all(plain.decoder, [reference])
    assert outcome(again) == outcome(reference)


def test_off_never_drafts(passage_gguf: Path) -> None:
    plain = runtime(passage_gguf, OFF)
    passage, assistant, user, _ = passage_ids(plain)
    job = Job([*passage, user, assistant], GREEDY, 100, frozenset({user}))
    run_all(plain.decoder, [job])
    assert job.drafted == 0 and plain.decoder.decode_calls == len(job.generated) + 1


def test_step_costs_are_learnt_per_size_and_say_how_long_a_draft_pays() -> None:
    """Bound by reading the weights (a laptop's 9B), a drafted token costs little against the step a lone
    sequence saves; on 2 cores a fifth row costs 70% more than four (the matrix kernel changes); with several
    sequences a saved step is worth only the row it no longer adds."""
    memory_bound, compute_bound = StepCosts(), StepCosts()
    assert memory_bound.cost(3) is None and memory_bound.extra(1, 4) == 0.0  # nothing learnt yet: drafts are tried
    for n in (1, 2, 5, 9, 1, 3, 17, 4):
        memory_bound.observe(n, 0.100 + 0.002 * n)
    assert memory_bound.cost(12) == pytest.approx(0.124)  # a size not seen: the line through those seen
    for n, seconds in ((1, 0.035), (2, 0.050), (3, 0.051), (4, 0.057), (5, 0.096), (6, 0.090), (8, 0.078)):
        compute_bound.observe(n, seconds)
    assert compute_bound.extra(4, 1) == pytest.approx(0.039) and compute_bound.extra(4, 4) == pytest.approx(0.021)

    def worth(acceptance: Acceptance, costs: StepCosts, sequences: int) -> int:
        return acceptance.worth(16, costs.saved(sequences), lambda k: costs.extra(sequences, k))

    assert compute_bound.saved(1) == 0.035  # alone: the whole step
    assert compute_bound.saved(4) == pytest.approx(0.006)  # one of four: what its row adds (57 against 51 ms)
    half, copying = Acceptance(1.0, 1.0), Acceptance(19.0, 1.0)  # right half the time; 95%
    assert worth(half, memory_bound, 1) == 3  # then a token would be kept less than MIN_WORTH of the time
    assert worth(half, compute_bound, 1) == 2  # a third token is nearly free (51 against 50 ms)
    assert worth(copying, compute_bound, 1) == 16
    assert worth(copying, compute_bound, 2) == 6  # 2 to 8 rows cost 28 ms; the 5.1 kept save 77
    assert worth(half, compute_bound, 4) == 0 and worth(half, memory_bound, 4) == 0
    assert worth(copying, memory_bound, 4) == 0  # a row costs what it saves: only latency would gain

"""Log-probabilities: the decoder's (generated and prompt tokens) equal the log-softmax of llama.cpp's own
logits for the same tokens, read by a plain llama.cpp context in this process (an independent reference);
batching, prompts longer than a batch, speculation and a grammar change none of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import factory
from helpers.logits import TOLERANCE, reference_logprobs

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.llama.decoder import ECHO_CHUNK, Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.core.llama.speculation import SpeculationSettings


def runtime(path: Path, slots: int, speculation: str = "auto") -> object:
    options = RuntimeOptions(ctx=1024, threads=2, speculation=SpeculationSettings(speculation))
    return load_runtime(ModelFacts.read(path), options, slots=slots)


def run_all(decoder: object, jobs: list[Job]) -> None:
    for job in jobs:
        decoder.submit(job)  # type: ignore[attr-defined]
    while decoder.has_work():  # type: ignore[attr-defined]
        decoder.step()  # type: ignore[attr-defined]


def check_against(reference: np.ndarray, tokens: list[int], scored: list, first: int, top: int) -> None:
    """`scored[i]` is the log-probability of tokens[first + i] given what precedes it."""
    assert len(scored) == len(tokens) - first
    for i, entry in enumerate(scored):
        row = reference[first + i - 1]
        assert entry.token == tokens[first + i]
        assert entry.logprob == pytest.approx(row[entry.token], abs=TOLERANCE)
        assert len(entry.top) == top
        best = np.argsort(-row, kind="stable")[:top]
        assert [t for t, _ in entry.top][:1] == [int(t) for t in best[:1]]
        assert [lp for _, lp in entry.top] == pytest.approx(list(row[best]), abs=TOLERANCE)


@pytest.mark.parametrize("speculation", ["auto", "off"])
def test_generated_and_prompt_logprobs_equal_llama_cpp_log_softmax(make_gguf: Callable[..., Path],
                                                                    speculation: str) -> None:
    path = make_gguf("f32")
    # longer than a scored batch, and repetitive so that prompt lookup drafts
    prompt = [(7 * i) % 50 + 3 for i in range(ECHO_CHUNK + 40)]
    rt = runtime(path, slots=3, speculation=speculation)
    other = Job([9, 8, 7] * 30, SamplerSettings(), 40, frozenset())  # decoded in the same batches
    scored = Job(prompt, SamplerSettings(), 24, frozenset(), top_logprobs=3, echo_logprobs=True)
    plain = Job(prompt[:50], SamplerSettings(temperature=0.9, seed=5), 24, frozenset(), top_logprobs=0)
    run_all(rt.decoder, [other, scored, plain])  # type: ignore[attr-defined]
    assert scored.finish == plain.finish == "length"
    whole = prompt + scored.generated
    reference = reference_logprobs(path, whole)
    check_against(reference, prompt, scored.prompt_logprobs, 1, 3)
    check_against(reference, whole, scored.logprobs, len(prompt), 3)
    assert all(entry.top[0][0] == entry.token for entry in scored.logprobs)  # greedy: the likeliest each time
    sampled = prompt[:50] + plain.generated
    check_against(reference_logprobs(path, sampled), sampled, plain.logprobs, 50, 0)
    assert not plain.prompt_logprobs


def test_a_grammar_does_not_change_the_models_logprobs(make_gguf: Callable[..., Path]) -> None:
    """The grammar decides which token comes, not how likely the model found it."""
    path = make_gguf("f32", real_tokenizer=factory.REAL_TOKENIZER.is_file())
    rt = runtime(path, slots=1)
    grammar = 'root ::= "yes" | "no"'
    job = Job([5, 6, 7, 8], SamplerSettings(grammar=grammar), 8, frozenset(rt.vocab.stop_ids),  # type: ignore[attr-defined]
              top_logprobs=2)
    run_all(rt.decoder, [job])  # type: ignore[attr-defined]
    assert job.generated and [e.token for e in job.logprobs][: len(job.generated)] == job.generated
    whole = job.prompt + [e.token for e in job.logprobs]  # with the stop token that ended it, if one did
    check_against(reference_logprobs(path, whole), whole, job.logprobs, len(job.prompt), 2)


def test_a_scored_prompt_is_read_whole_even_when_a_slot_holds_its_beginning(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf("f32")
    rt = runtime(path, slots=1)
    prompt = list(range(20, 80))
    run_all(rt.decoder, [Job(prompt[:40], SamplerSettings(), 2, frozenset())])  # type: ignore[attr-defined]
    scored = Job(prompt, SamplerSettings(), 1, frozenset(), top_logprobs=1, echo_logprobs=True)
    run_all(rt.decoder, [scored])  # type: ignore[attr-defined]
    assert scored.evaluated_tokens == len(prompt)
    check_against(reference_logprobs(path, prompt), prompt, scored.prompt_logprobs, 1, 1)

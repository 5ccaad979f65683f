"""Log-probabilities over HTTP, read by the official `openai` client: Completions (with `echo`, OpenAI's
legacy object, a list of prompts), Chat Completions and the Responses API, whole and streamed; each value
is the log-softmax of llama.cpp's own logits at that position (tests/test_logprobs.py's reference)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.logits import TOLERANCE, reference_logprobs, token_ids
from helpers.serving import Server

pytestmark = pytest.mark.processes  # a real server
PROMPT = [11, 12, 13, 40, 41, 42, 11, 12, 13, 40]
MARKUP = re.compile(r"\[[a-zA-Z]*MASK\]|<\|?[a-z_/]+\|?>")  # GLM-4's control tokens, as named


def model_path(server: Server) -> Path:
    return Path(server.process.args[4])  # type: ignore[index]


def tokens_of(server: Server, messages: list[dict]) -> list[int]:
    status, _, body = server.request("POST", "/tokenize", {"messages": messages})
    assert status == 200
    return json.loads(body)["tokens"]


def test_an_echoed_prompt_is_scored_as_lm_eval_reads_it(random_server: Server) -> None:
    """lm-evaluation-harness's multiple-choice request: token ids, echo, logprobs 1, max_tokens 1."""
    got = random_server.client().completions.create(model="m", prompt=PROMPT, echo=True, logprobs=1, max_tokens=1,
                                                    temperature=0)
    [choice] = got.choices
    lp = choice.logprobs
    assert len(lp.tokens) == len(PROMPT) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    generated = [token_ids(model_path(random_server))[lp.tokens[-1].encode()]]
    reference = reference_logprobs(model_path(random_server), PROMPT + generated, random_server.flash_attention)
    for i in range(1, len(PROMPT) + 1):
        token = (PROMPT + generated)[i]
        assert lp.token_logprobs[i] == pytest.approx(reference[i - 1][token], abs=TOLERANCE)
        [(_name, best)] = lp.top_logprobs[i].items()
        assert best == pytest.approx(reference[i - 1].max(), abs=TOLERANCE)
    assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()))  # greedy: the likeliest
    assert choice.text == "".join(lp.tokens) or "\\x" in "".join(lp.tokens)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert got.usage.prompt_tokens == len(PROMPT) and got.usage.prompt_tokens_details.cached_tokens == 0


def test_a_list_of_scored_prompts_gives_each_its_own_choice(random_server: Server) -> None:
    prompts = [PROMPT, PROMPT[:6], PROMPT[2:]]
    client = random_server.client()
    asked = {"model": "m", "echo": True, "logprobs": 2, "max_tokens": 3, "temperature": 0}
    together = client.completions.create(prompt=prompts, **asked)
    for prompt, choice in zip(prompts, sorted(together.choices, key=lambda c: c.index), strict=True):
        alone = client.completions.create(prompt=prompt, **asked).choices[0]
        assert choice.text == alone.text and choice.logprobs.tokens == alone.logprobs.tokens
        assert choice.logprobs.token_logprobs[1:] == pytest.approx(alone.logprobs.token_logprobs[1:], abs=TOLERANCE)
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs[1:])


def test_a_streamed_completion_gives_the_same_scores_as_a_whole_one(random_server: Server) -> None:
    client = random_server.client()
    asked = {"model": "m", "prompt": PROMPT, "echo": True, "logprobs": 3, "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**asked).choices[0]
    tokens, scores, text = [], [], ""
    for chunk in client.completions.create(**asked, stream=True):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs:
                tokens += choice.logprobs.tokens
                scores += choice.logprobs.token_logprobs
    assert text == whole.text and tokens == whole.logprobs.tokens
    assert scores[0] is None and scores[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=TOLERANCE)


MESSAGES = [{"role": "user", "content": "Hello there"}]


def test_chat_logprobs_are_the_models_and_the_stream_gives_the_same(random_server: Server) -> None:
    client = random_server.client()
    whole = client.chat.completions.create(model="m", messages=MESSAGES, logprobs=True, top_logprobs=3,
                                           max_tokens=10, temperature=0)
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in entries)
    assert all(e.logprob == pytest.approx(e.top_logprobs[0].logprob) for e in entries)  # greedy
    written = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")
    assert MARKUP.sub("", written) == whole.choices[0].message.content  # control tokens are named, not shown
    prompt = tokens_of(random_server, MESSAGES)
    ids = token_ids(model_path(random_server))
    generated = [ids[bytes(e.bytes)] for e in entries]
    reference = reference_logprobs(model_path(random_server), prompt + generated, random_server.flash_attention)
    for i, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(reference[len(prompt) - 1 + i][generated[i]], abs=TOLERANCE)
    streamed = []
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, logprobs=True, top_logprobs=3,
                                                max_tokens=10, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed += chunk.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=TOLERANCE)
    plain = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_responses_give_output_text_logprobs_when_included(random_server: Server) -> None:
    client = random_server.client()
    chat = client.chat.completions.create(model="m", messages=MESSAGES, logprobs=True, top_logprobs=2,
                                          max_tokens=8, temperature=0).choices[0].logprobs.content
    got = client.responses.create(model="m", input="Hello there", include=["message.output_text.logprobs"],
                                  top_logprobs=2, max_output_tokens=8, temperature=0, metadata={"run": "7"})
    [part] = got.output[0].content
    assert [e.token for e in part.logprobs] == [e.token for e in chat]
    assert [len(e.top_logprobs) for e in part.logprobs] == [2] * len(chat)
    assert got.metadata == {"run": "7"}
    streamed = []
    with client.responses.stream(model="m", input="Hello there", include=["message.output_text.logprobs"],
                                 top_logprobs=2, max_output_tokens=8, temperature=0) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                streamed += event.logprobs
    assert [e.token for e in streamed] == [e.token for e in chat]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"prompt": "a", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "a", "suffix": "b"}, "suffix"),
    ("/v1/responses", {"input": "a", "include": ["file_search_call.results"]}, "include"),
])
def test_what_cannot_be_scored_is_refused_by_name(random_server: Server, path: str, body: dict, param: str) -> None:
    status, _, answer = random_server.request("POST", path, body)
    assert status == 400 and json.loads(answer)["error"]["param"] == param


def test_tokenizer_info_names_the_special_tokens_and_the_context(random_server: Server) -> None:
    status, _, body = random_server.request("GET", "/tokenizer_info")
    info = json.loads(body)
    assert status == 200 and info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 1024
    assert "<|assistant|>" in info["chat_template"]
    status, _, body = random_server.request("POST", "/tokenize", {"prompt": info["eos_token"]})
    assert json.loads(body)["count"] == 1  # lm-eval reads the end-of-text token's id this way

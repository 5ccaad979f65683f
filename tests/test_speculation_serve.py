"""Speculation in `glm4-local serve`: two real servers on the same GGUF, `--speculate auto` and `off`,
driven by the openai client: the same replies under concurrency, stop strings that fall inside a draft,
tool calls, and the drafted/accepted counts in usage and /metrics."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import factory
from helpers.serving import Server

pytestmark = pytest.mark.processes  # real servers

# words the tiny BPE vocabulary holds as single tokens: the scripted model recites them in this order,
# and a user who quotes them gives prompt lookup the passage to draft from
WORDS = (" the", " monde", " main", " lazy", " world", " spaces", " return", " quick", " over", " jumps",
         " fox", " dog", " def", " brown", " Xin", " Hello", " Bonjour", " The")
SCRIPT = (("<|assistant|>", "\n"), ("\n", WORDS[0]), *itertools.pairwise(WORDS), (WORDS[-1], "<|user|>"))
PASSAGE = "".join(WORDS)
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up the weather",
                                           "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def passage_gguf(make_gguf: Callable[..., Path]) -> Path:
    return make_gguf("f32", dtype="f32", script=SCRIPT)


@pytest.fixture(scope="module")
def servers(passage_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    fast = Server(passage_gguf, tmp_path_factory.mktemp("fast"), "--ctx", "512", "--parallel", "4")
    try:
        plain = Server(passage_gguf, tmp_path_factory.mktemp("plain"), "--ctx", "512", "--parallel", "4",
                       "--speculate", "off")
    except BaseException:
        fast.stop()
        raise
    yield fast, plain
    fast.stop()
    plain.stop()


def ask(server: Server, content: str, **options: Any) -> Any:
    return server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                   temperature=0, **options)


def test_the_passage_is_recited_identically_with_most_of_it_drafted(servers: tuple[Server, Server]) -> None:
    fast, plain = servers
    before = fast.metrics()
    quick, reference = ask(fast, f"Repeat:{PASSAGE}"), ask(plain, f"Repeat:{PASSAGE}")
    # (the reply's first "\\n" is GLM-4's own and not part of the content)
    assert quick.choices[0].message.content == reference.choices[0].message.content == PASSAGE
    assert quick.choices[0].finish_reason == reference.choices[0].finish_reason == "stop"
    details = quick.usage.completion_tokens_details
    assert details.accepted_prediction_tokens >= len(WORDS) - 5
    assert reference.usage.completion_tokens_details.accepted_prediction_tokens == 0
    after = fast.metrics()
    assert after["glm4_local_accepted_tokens_total"] - before["glm4_local_accepted_tokens_total"] == \
        details.accepted_prediction_tokens
    assert after["glm4_local_drafted_tokens_total"] > before["glm4_local_drafted_tokens_total"]
    assert after["glm4_local_decode_calls_total"] - before["glm4_local_decode_calls_total"] < len(WORDS) / 2


def test_four_concurrent_requests_get_the_replies_they_get_without_speculation(servers: tuple[Server, Server]) -> None:
    fast, plain = servers
    prompts = [f"Repeat:{''.join(WORDS[i:])}{''.join(WORDS[:i])}" for i in (0, 3, 7, 11, 14, 2, 9, 5)]
    for limit in (6, 40):
        with ThreadPoolExecutor(4) as pool:
            quick = list(pool.map(lambda p, n=limit: ask(fast, p, max_tokens=n), prompts))
            reference = list(pool.map(lambda p, n=limit: ask(plain, p, max_tokens=n), prompts))
        assert [(r.choices[0].message.content, r.choices[0].finish_reason) for r in quick] == \
            [(r.choices[0].message.content, r.choices[0].finish_reason) for r in reference]


@pytest.mark.parametrize("stop", [" world spaces", "rld sp", " Xin", ["ump", " the m"]])
def test_a_stop_string_inside_a_draft_ends_the_reply_where_it_ends_without_one(servers: tuple[Server, Server],
                                                                              stop: str | list[str]) -> None:
    fast, plain = servers
    quick, reference = ask(fast, f"Repeat:{PASSAGE}", stop=stop), ask(plain, f"Repeat:{PASSAGE}", stop=stop)
    text = quick.choices[0].message.content
    assert (text, quick.choices[0].finish_reason) == (reference.choices[0].message.content, "stop")
    assert not any(s in text for s in ([stop] if isinstance(stop, str) else stop))


@pytest.mark.parametrize("stop", [" world spaces", " Xin"])
def test_usage_counts_the_tokens_up_to_the_stop_every_time(servers: tuple[Server, Server], stop: str) -> None:
    """What the decoder made after the stop (a draft accepted whole, a step already under way) is not the
    client's: the count is the same on every run, with speculation or without, streamed or whole."""
    fast, plain = servers
    upto = PASSAGE.index(stop) + len(stop)
    expected = len([w for w in WORDS if PASSAGE.index(w) < upto]) + 1  # the reply's leading "\n" is a token too
    counts = set()
    for _ in range(4):
        for server in (fast, plain):
            counts.add(ask(server, f"Repeat:{PASSAGE}", stop=stop).usage.completion_tokens)
            chunks = list(ask(server, f"Repeat:{PASSAGE}", stop=stop, stream=True,
                              stream_options={"include_usage": True}))
            counts.add(chunks[-1].usage.completion_tokens)
    assert counts == {expected}


def test_streamed_and_whole_replies_agree(servers: tuple[Server, Server]) -> None:
    fast, _ = servers
    chunks = list(ask(fast, f"Repeat:{PASSAGE}", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        ask(fast, f"Repeat:{PASSAGE}").choices[0].message.content


def test_tool_calls_are_the_same_with_speculation(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """The user quotes the call, so prompt lookup drafts it: the same call, finish and arguments."""
    history = [{"role": "user", "content": "lookup\n{}\nlookup\n{} - What is the weather?"}]
    replies = []
    for flag in ("auto", "off"):
        (tmp_path / flag).mkdir()
        server = Server(scripted_gguf("tool"), tmp_path / flag, "--ctx", "1024", "--speculate", flag)
        try:
            reply = server.client().chat.completions.create(model="m", messages=history, tools=TOOLS, temperature=0)
        finally:
            server.stop()
        (call,) = reply.choices[0].message.tool_calls
        replies.append((reply.choices[0].finish_reason, call.function.name, call.function.arguments,
                        reply.usage.completion_tokens_details.accepted_prediction_tokens))
    assert replies[0][:3] == replies[1][:3] == ("tool_calls", "lookup", "{}")
    assert (replies[0][3], replies[1][3]) == (1, 0)  # "{}" drafted after "lookup\n", and accepted


def test_the_words_are_single_tokens(passage_gguf: Path) -> None:
    """The premise of the tests above: quoting the passage puts its tokens in the prompt."""
    from glm4_local.chat.runtime import Vocabulary
    from glm4_local.chat.setup import ModelFacts
    from glm4_local.core.llama import door

    vocab = Vocabulary(door.load(passage_gguf, vocab_only=True), ModelFacts.read(passage_gguf).family)
    assert all(len(vocab.text_tokens(w)) == 1 for w in WORDS), factory.CORPUS[:40]

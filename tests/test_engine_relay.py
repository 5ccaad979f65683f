"""What `serve --engine` sends a llama-server and how it reads the stream back, without processes: the
request's sampling fields, and the token ids llama-server's stream leaves out, recovered from the text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from glm4_local.chat.runtime import Vocabulary
from glm4_local.chat.setup import ModelFacts
from glm4_local.core.llama import door
from glm4_local.core.llama.jobs import Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.server.engine_client import SAMPLERS, PieceIndex, TokenRelay, completion_body


@pytest.fixture(scope="module")
def vocab(make_gguf: Callable[..., Path]) -> Vocabulary:
    facts = ModelFacts.read(make_gguf("f32"))
    return Vocabulary(door.load_model(facts.path, header=facts.header, vocab_only=True), facts.family)


@pytest.fixture(scope="module")
def index(vocab: Vocabulary) -> PieceIndex:
    return PieceIndex(vocab, vocab.model.n_vocab())


def byte_token(index: PieceIndex, value: int) -> int:
    return index.ids[bytes([value])]


def test_tokens_left_out_mid_character_are_recovered_from_the_next_chunks_text(index: PieceIndex) -> None:
    """"你" as three byte tokens: llama-server sends the first two only inside the third's chunk, as text."""
    first, second, third = (byte_token(index, b) for b in "你".encode())
    word = index.ids[b"the"] if b"the" in index.ids else index.ids[b"t"]
    relay = TokenRelay(index)
    assert relay.take({"tokens": [word], "tokens_predicted": 1, "content": index.vocab.piece(word).decode()}) == [word]
    assert relay.take({"tokens": [third], "tokens_predicted": 4, "content": "你"}) == [first, second, third]
    assert relay.take({"tokens": [], "tokens_predicted": 4, "content": "", "stop": True}) == []


def test_split_finds_exactly_the_count_of_tokens_or_none(index: PieceIndex) -> None:
    data = "你".encode()
    assert index.split(data, 3) == [byte_token(index, b) for b in data]
    assert index.split(data, 4) is None  # no token is empty
    assert index.split(b"", 0) == []
    assert index.split(b"x" * 10_000, 10**9) is None  # an engine's count past the bytes: not searched at all
    long_text = b"\xff" + b"x" * 10_000  # past what is searched: a token per byte, the bytes kept
    assert index.cover(long_text) == [byte_token(index, 0xFF)] + [byte_token(index, ord("x"))] * 10_000


def test_bytes_that_are_no_utf8_keep_their_text_as_the_engine_sent_it(index: PieceIndex) -> None:
    """A broken model's bytes reach the front as U+FFFD: the ids are gone, the text is what the engine sent."""
    relay = TokenRelay(index)
    last = byte_token(index, ord("x"))
    tokens = relay.take({"tokens": [last], "tokens_predicted": 3, "content": "\ufffd\ufffdx"})
    assert b"".join(index.vocab.piece(t) for t in tokens) == "\ufffd\ufffdx".encode()


def test_every_sampling_setting_is_spelled_out_in_our_decoders_order() -> None:
    settings = SamplerSettings(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1,
                               frequency_penalty=0.2, presence_penalty=0.3, seed=2**40 + 5, grammar='root ::= "a"')
    body = completion_body(Job([1, 2, 3], settings, 16, frozenset()), 16)
    assert body["prompt"] == [1, 2, 3] and body["n_predict"] == 16 and body["samplers"] == SAMPLERS
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"]) == (0.7, 0.9, 40, 0.05)
    assert (body["repeat_penalty"], body["frequency_penalty"], body["presence_penalty"]) == (1.1, 0.2, 0.3)
    assert body["seed"] == 5 and body["grammar"] == 'root ::= "a"'  # llama.cpp's seeds are 32-bit, as ours
    # what llama-server would otherwise add of its own: off
    assert (body["typical_p"], body["xtc_probability"], body["dry_multiplier"], body["mirostat"]) == (1.0, 0, 0, 0)
    assert body["stream"] and body["return_tokens"] and body["cache_prompt"] and body["stop"] == []
    random_seed = completion_body(Job([1], SamplerSettings(), 1, frozenset()), 1)
    assert random_seed["seed"] == 0xFFFFFFFF and "grammar" not in random_seed

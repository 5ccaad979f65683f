"""`serve --embedding-model`: embeddings through the official `openai` client (float and its default base64)
and Ollama's client, equal to a numpy forward pass of the same tiny BERT; without that model every
embedding route says GLM-4 makes none and names the option; what cannot be embedded is refused by index."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.bert import reference_embedding, write_bert_gguf
from helpers.cli import invoke, one_line_error
from helpers.serving import Server

pytestmark = pytest.mark.processes  # a real server
TEXTS = ["hello world", "the cat sat on the mat.", "dogs running", "你好", "a fast red car"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bert_gguf(tmp_path_factory.mktemp("bert") / "tiny-bert.gguf")


@pytest.fixture(scope="module")
def embedding_server(make_gguf: Callable[..., Path], bert: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(make_gguf("f32"), tmp_path_factory.mktemp("serve"), "--ctx", "1024", "--embedding-model", str(bert))
    yield server
    server.stop()


@functools.cache
def tokens_of(bert: Path, text: str) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(bert), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode("utf-8"))  # with [CLS] and [SEP], as the model reads a text
    finally:
        llm.close()


def test_openai_embeddings_are_the_models_in_both_encodings(embedding_server: Server, bert: Path) -> None:
    client = embedding_server.client()
    expected = [reference_embedding(tokens_of(bert, t)) for t in TEXTS]
    for encoding in ("float", "base64", None):  # None: the client asks for base64 itself, and decodes it
        asked = {"encoding_format": encoding} if encoding else {}
        got = client.embeddings.create(model="anything", input=TEXTS, **asked)
        assert [d.index for d in got.data] == list(range(len(TEXTS))) and got.model == "tiny-bert"
        for item, reference in zip(got.data, expected, strict=True):
            vector = item.embedding
            if isinstance(vector, str):  # asked for base64 by name: the little-endian float32 bytes, encoded
                vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
            assert np.allclose(vector, reference, atol=1e-4)
        assert got.usage.prompt_tokens == sum(len(tokens_of(bert, t)) for t in TEXTS)
    single = client.embeddings.create(model="m", input="hello world").data[0].embedding
    assert np.allclose(single, expected[0], atol=1e-4)


def test_ollama_embed_and_the_older_embeddings_route(embedding_server: Server, bert: Path) -> None:
    ollama = pytest.importorskip("ollama", reason="needs the ollama client (the [dev] extra)")
    client = ollama.Client(host=f"http://127.0.0.1:{embedding_server.port}")
    got = client.embed(model="tiny-bert", input=TEXTS[:2])
    assert np.allclose(got.embeddings, [reference_embedding(tokens_of(bert, t)) for t in TEXTS[:2]], atol=1e-4)
    older = client.embeddings(model="tiny-bert", prompt=TEXTS[3])
    assert np.allclose(older.embedding, reference_embedding(tokens_of(bert, TEXTS[3])), atol=1e-4)
    long = " ".join(["hello"] * 100)  # more than the model's 64 tokens: Ollama cuts it unless told not to
    assert len(client.embed(model="m", input=long).embeddings[0]) == 32
    with pytest.raises(ollama.ResponseError, match=r"input\[0\]: 102 tokens; the embedding model reads at most 64"):
        client.embed(model="m", input=long, truncate=False)


@pytest.mark.parametrize(("body", "param"), [
    ({"input": ["hello", " ".join(["cat"] * 80)]}, "input[1]"),
    ({"input": ["hello", ""]}, "input[1]"),
    ({"input": [[5, 6, 7]]}, "input[0]"),
    ({"input": []}, "input"),
    ({"input": "hello", "dimensions": 8}, "dimensions"),
    ({"input": "hello", "encoding_format": "int8"}, "encoding_format"),
])
def test_what_cannot_be_embedded_is_refused_by_name(embedding_server: Server, body: dict, param: str) -> None:
    status, _, answer = embedding_server.request("POST", "/v1/embeddings", body)
    assert status == 400 and json.loads(answer)["error"]["param"] == param


def test_without_an_embedding_model_every_route_names_the_option(random_server: Server) -> None:
    for path, body in (("/v1/embeddings", {"input": "hi"}), ("/embeddings", {"input": "hi"}),
                       ("/api/embed", {"model": "m", "input": "hi"}),
                       ("/api/embeddings", {"model": "m", "prompt": "hi"})):
        status, _, answer = random_server.request("POST", path, body)
        error = json.loads(answer)["error"]
        message = error if isinstance(error, str) else error["message"]
        assert status == 400 and "makes no embeddings" in message and "--embedding-model" in message, path


def test_a_file_that_is_not_an_embedding_model_is_refused_before_serving(make_gguf: Callable[..., Path],
                                                                         tmp_path: Path) -> None:
    chat_model = make_gguf("f32")
    result = invoke(["serve", str(chat_model), "--port", "0", "--embedding-model", str(chat_model)])
    one_line_error(result, "is not an embedding model", "--embedding-model needs an embedding GGUF")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    one_line_error(invoke(["serve", str(chat_model), "--port", "0", "--embedding-model", str(junk)]), "junk.gguf")

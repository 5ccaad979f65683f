"""The model's own tokenization over HTTP, in the shapes clients probe: llama.cpp's server (`/tokenize`
{"content"} and `/detokenize` {"tokens"}) and vLLM's (`{"prompt"}` or `{"messages"}`, with "count" and
"max_model_len"; `GET /tokenizer_info`, which lm-evaluation-harness asks before it tokenizes anything).
A text is tokenized as /v1/completions tokenizes a prompt (its markup becomes special tokens); messages as
a chat request renders them (template, tools)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import gguf
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from glm4_local.chat.schema import SchemaError, check_messages, check_tools
from glm4_local.server.protocol import bad_request

Handler = Callable[[Request], Awaitable[Response]]


def _tokens(body: dict[str, Any], loaded: Any) -> list[int]:
    runtime = loaded.runtime
    if isinstance(body.get("messages"), list):
        try:
            messages = check_messages(body["messages"], "messages")
            tools = check_tools(body["tools"], "tools") if body.get("tools") else None
        except SchemaError as e:
            raise bad_request(str(e), e.param) from None
        return runtime.vocab.prompt(loaded.facts.template, messages, tools)
    text = body.get("content", body.get("prompt"))
    if not isinstance(text, str):
        raise bad_request("send {\"content\": TEXT} (or vLLM's \"prompt\" or \"messages\")", "content")
    return runtime.vocab.text_tokens(text, special=True)


def _token_name(loaded: Any, key: str) -> str | None:
    """The markup of the token the GGUF names under `key` (its end-of-text token, ...), if it names one."""
    token = loaded.facts.header.get(key)
    if not isinstance(token, int) or not 0 <= token < loaded.runtime.decoder.n_vocab:
        return None
    return loaded.runtime.vocab.marked_text([token])


def tokenizer_info(loaded: Any) -> dict[str, Any]:
    """vLLM's /tokenizer_info: the special tokens by their markup, the chat template, the context."""
    keys = gguf.Keys.Tokenizer
    return {"tokenizer_class": f"GGUF {loaded.facts.header.get(keys.MODEL, 'unknown')} tokenizer",
            "eos_token": _token_name(loaded, keys.EOS_ID), "bos_token": _token_name(loaded, keys.BOS_ID),
            "pad_token": _token_name(loaded, keys.PAD_ID), "unk_token": _token_name(loaded, keys.UNK_ID),
            "chat_template": loaded.facts.template.source, "model_max_length": loaded.runtime.n_ctx,
            "vocab_size": loaded.runtime.decoder.n_vocab}


def tokenizer_routes(route: Callable[[Handler], Handler], model: Callable[[], Any],
                     read_json: Callable[[Request], Awaitable[Any]]) -> list[BaseRoute]:
    """`model()`: the loaded model (503 while it loads)."""

    async def tokenize(request: Request) -> Response:
        body, loaded = await read_json(request), model()
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        tokens = await run_in_threadpool(_tokens, body, loaded)
        found: dict[str, Any] = {"tokens": tokens, "count": len(tokens), "max_model_len": loaded.runtime.n_ctx}
        if body.get("with_pieces"):
            pieces = [loaded.runtime.vocab.marked_piece(t) for t in tokens]
            found["tokens"] = [{"id": t, "piece": p.decode("utf-8", errors="replace")} for t, p in
                               zip(tokens, pieces, strict=True)]
        return JSONResponse(found)

    async def detokenize(request: Request) -> Response:
        body, loaded = await read_json(request), model()
        tokens = body.get("tokens") if isinstance(body, dict) else None
        n_vocab = loaded.runtime.decoder.n_vocab
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < n_vocab for t in tokens):
            raise bad_request(f"tokens: a list of token ids from 0 to {n_vocab - 1}", "tokens")
        text = loaded.runtime.vocab.marked_text(tokens)
        return JSONResponse({"content": text, "prompt": text})

    async def info(request: Request) -> Response:
        return JSONResponse(tokenizer_info(model()))

    return [*(Route(prefix + path, route(handler), methods=["POST"]) for prefix in ("", "/v1")
              for path, handler in (("/tokenize", tokenize), ("/detokenize", detokenize))),
            *(Route(prefix + "/tokenizer_info", route(info), methods=["GET"]) for prefix in ("", "/v1"))]

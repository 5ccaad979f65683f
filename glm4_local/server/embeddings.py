"""Embeddings in OpenAI's shape (`POST /v1/embeddings`) and Ollama's (`/api/embed`, the older `/api/embeddings`),
made by the embedding model `serve --embedding-model` loads. GLM-4 makes none: without that model every
embedding route says so and names the option (Open WebUI asks for embeddings when pointed at a server)."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from glm4_local.core.llama.embedder import Embedded, Embedder, EmbeddingInputError
from glm4_local.server.protocol import bad_request

MAX_INPUTS = 2048  # texts in one request (OpenAI's limit)
Handler = Callable[[Request], Awaitable[Response]]


def texts_of(given: Any, field: str) -> list[str]:
    """A text or a list of texts; token ids (which OpenAI's API also takes) are refused by name."""
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts:
        raise bad_request(f"{field}: a text or a list of texts", field)
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"{field}: {len(texts):,} texts; at most {MAX_INPUTS:,} in one request", field)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            what = "token ids are not taken; send the text" if isinstance(text, int | list) else "must be a text"
            raise bad_request(f"{field}[{i}]: {what}", f"{field}[{i}]")
    return texts


def embedder_of(loaded: Any, model_id: str) -> Embedder:
    if loaded.embedder is None:
        raise bad_request(f"{model_id} is a chat model and makes no embeddings; start the server with "
                          "--embedding-model FILE.gguf (an embedding GGUF, e.g. bge-m3) to serve them", "model",
                          "embeddings_not_served")
    return loaded.embedder


async def embedded(embedder: Embedder, texts: list[str], field: str, truncate: bool = False) -> Embedded:
    try:
        return await run_in_threadpool(embedder.embed, texts, truncate)
    except EmbeddingInputError as e:
        raise bad_request(f"{field}[{e.index}]: {e}", f"{field}[{e.index}]") from None


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """OpenAI's "base64" is the little-endian float32 array (the `openai` client asks for it by default)."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def embedding_routes(route: Callable[[Handler], Handler], model: Callable[[], Any], model_id: str,
                     read_json: Callable[[Request], Awaitable[Any]]) -> list[BaseRoute]:
    """OpenAI's route (also without /v1, as the others); Ollama's are in ollama_routes, with these helpers."""

    async def embeddings(request: Request) -> Response:
        body, loaded = await read_json(request), model()
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        embedder = embedder_of(loaded, model_id)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise bad_request("encoding_format: \"float\" or \"base64\"", "encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != embedder.dimensions:
            raise bad_request(f"dimensions: {embedder.name} makes vectors of {embedder.dimensions} and cannot "
                              "shorten them", "dimensions")
        done = await embedded(embedder, texts_of(body.get("input"), "input"), "input")
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
                for i, v in enumerate(done.vectors)]
        return JSONResponse({"object": "list", "data": data, "model": embedder.name,
                             "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens}})

    return [Route(prefix + "/embeddings", route(embeddings), methods=["POST"]) for prefix in ("/v1", "")]


async def ollama_embed(body: Any, loaded: Any, model_id: str, legacy: bool) -> dict[str, Any]:
    """/api/embed ({"input"} → {"embeddings"}) or the older /api/embeddings ({"prompt"} → {"embedding"})."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    embedder, started = embedder_of(loaded, model_id), time.perf_counter_ns()
    if legacy:
        if not isinstance(body.get("prompt"), str):
            raise bad_request("prompt: a text", "prompt")
        done = await embedded(embedder, [body["prompt"]], "prompt", truncate=True)
        return {"embedding": done.vectors[0]}
    done = await embedded(embedder, texts_of(body.get("input"), "input"), "input",
                          truncate=body.get("truncate", True) is not False)
    return {"model": embedder.name, "embeddings": done.vectors, "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0, "prompt_eval_count": done.tokens}

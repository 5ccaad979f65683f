"""The routes of Ollama's API (server/ollama.py has the shapes), behind the same key, guard and limits as
the OpenAI routes, planned and run by the same code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from glm4_local.server import ollama
from glm4_local.server.completions import Run
from glm4_local.server.embeddings import ollama_embed
from glm4_local.server.plan import Plan, chat_plan, completion_plans
from glm4_local.server.protocol import ApiError, CompletionRequest, bad_request

Handler = Callable[[Request], Awaitable[Response]]
Planned = Callable[[Request, Callable[[Any], Any], Callable[[Any], Plan]], Awaitable[tuple[Any, Plan]]]
Streamed = Callable[[Run, AsyncIterator[bytes]], Response]


class OllamaState(Protocol):
    model_id: str
    options: Any  # the server's ServeOptions (default_max_tokens)

    def model(self) -> Any: ...  # the loaded model (facts, runtime, scheduler, defaults); 503 while it loads


def ollama_error(e: ApiError) -> JSONResponse:
    """An error as Ollama's clients read one: {"error": MESSAGE}."""
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


def ollama_routes(route: Callable[[Handler], Handler], state: OllamaState, planned: Planned, read_json: Callable[
        [Request], Awaitable[Any]], streamed: Streamed) -> list[BaseRoute]:
    """`route` guards a handler (key, errors in Ollama's shape); `planned` reads, checks and plans a request;
    `streamed` sends a run's lines as newline-delimited JSON."""

    def limit() -> int:
        return state.options.default_max_tokens

    async def replied(request: Request, plan: Plan, chat: bool) -> Response:
        loaded = state.model()
        reply = ollama.OllamaReply(Run(plan, loaded.runtime, loaded.scheduler, state.model_id), state.model_id, chat)
        if plan.stream:
            return streamed(reply.run, reply.lines())
        return JSONResponse(await reply.whole(request))

    async def chat(request: Request) -> Response:
        loaded = state.model()
        _, plan = await planned(request, ollama.chat_request,
                                lambda asked: chat_plan(asked, loaded.runtime, loaded.facts, loaded.defaults, limit()))
        return await replied(request, plan, chat=True)

    async def generate(request: Request) -> Response:
        loaded = state.model()

        def make_plan(asked: Any) -> Plan:
            if isinstance(asked, CompletionRequest):
                return completion_plans(asked, loaded.runtime, loaded.defaults, limit())[0]
            return chat_plan(asked, loaded.runtime, loaded.facts, loaded.defaults, limit())

        _, plan = await planned(request, ollama.generate_request, make_plan)
        return await replied(request, plan, chat=False)

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [ollama.model_entry(state.model().facts, state.model_id)]})

    async def running(request: Request) -> Response:
        loaded = state.model()
        entry = ollama.model_entry(loaded.facts, state.model_id)
        return JSONResponse({"models": [entry | {"expires_at": "2999-12-31T23:59:59Z", "size_vram": 0,
                                                 "context_length": loaded.runtime.n_ctx}]})

    async def show(request: Request) -> Response:
        await read_json(request)  # any name: this server has one model
        loaded = state.model()
        return JSONResponse(ollama.show(loaded.facts, loaded.runtime.n_ctx))

    async def version(request: Request) -> Response:
        return JSONResponse({"version": ollama.API_VERSION})

    async def pull(request: Request) -> Response:
        body = await read_json(request)
        name = str((body or {}).get("model") or (body or {}).get("name") or "") if isinstance(body, dict) else ""
        if name.removesuffix(":latest") != state.model_id:
            raise bad_request(f"model {name!r}: this server serves {state.model_id!r}; pull another with "
                              "`glm4-local pull NAME` and serve it", "model")
        return JSONResponse({"status": "success"})  # the one it serves is here already

    async def embed(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await ollama_embed(body, state.model(), state.model_id, legacy=False))

    async def embeddings(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await ollama_embed(body, state.model(), state.model_id, legacy=True))

    api = [("/api/chat", chat, "POST"), ("/api/generate", generate, "POST"), ("/api/tags", tags, "GET"),
           ("/api/ps", running, "GET"), ("/api/show", show, "POST"), ("/api/version", version, "GET"),
           ("/api/pull", pull, "POST"), ("/api/embed", embed, "POST"), ("/api/embeddings", embeddings, "POST")]
    return [Route(path, route(handler), methods=[method]) for path, handler, method in api]

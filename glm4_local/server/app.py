"""The HTTP routes: OpenAI's /v1 API, /health and /metrics, behind an API key when one is set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from glm4_local.chat.runtime import ChatRuntime
from glm4_local.chat.setup import ModelFacts
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.llama.embedder import Embedder
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.server.batch import Batch
from glm4_local.server.completions import Run
from glm4_local.server.embeddings import embedding_routes
from glm4_local.server.engine_pool import EnginePool
from glm4_local.server.guard import BrowserGuard, same_origin
from glm4_local.server.metrics import prometheus_text
from glm4_local.server.ollama_routes import ollama_error, ollama_routes
from glm4_local.server.options import DEFAULT_CLIENT_TIMEOUT, ServeOptions
from glm4_local.server.page_routes import file_url, page_routes
from glm4_local.server.plan import Plan, chat_plan, completion_plans
from glm4_local.server.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    ResponsesRequest,
    bad_request,
    validation_error,
)
from glm4_local.server.request_log import EndsWhenStopped, LineWriter, RequestLog, RequestUsage
from glm4_local.server.responses import ResponseShape, chat_request, renamed
from glm4_local.server.scheduler import Scheduler
from glm4_local.server.tokenizer_routes import tokenizer_routes
from glm4_local.server.tool_runs import ToolRun, total_usage
from glm4_local.server.tool_sessions import ToolSessions

LARGE_BODY = 1024 * 1024  # bodies over this are planned LARGE_AT_ONCE at a time
LARGE_AT_ONCE = 2
Model = TypeVar("Model", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Loaded:
    facts: ModelFacts
    runtime: ChatRuntime
    scheduler: Scheduler
    defaults: SamplerSettings  # the GGUF's sampling defaults
    embedder: Embedder | None = None  # serve --embedding-model


@dataclass
class ServerState:
    model_id: str
    options: ServeOptions = field(default_factory=ServeOptions)
    family: ModelFamily | None = None  # the model's, known before it is loaded (what the page is told)
    loaded: Loaded | None = None
    error: str | None = None  # why loading failed
    tools: ToolSessions | None = None  # the tools the server runs itself (serve --python/--browser/--mcp)
    started: float = field(default_factory=time.time)
    request_log: LineWriter | None = None  # a line per request, when given

    def model(self) -> Loaded:
        if self.loaded is None:
            raise ApiError(503, "the model is still loading" if self.error is None else self.error, "server_error",
                           code="model_loading", headers={"Retry-After": "1"})
        return self.loaded


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_body(request: Request, limit: int) -> bytearray:
    body = bytearray()
    async for chunk in request.stream():  # ClientDisconnect when the client leaves mid-body
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body larger than {limit:,} bytes")
    return body


async def read_body(request: Request, limit: int, timeout: float = DEFAULT_CLIENT_TIMEOUT) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body larger than {limit:,} bytes")
    try:
        return bytes(await asyncio.wait_for(_read_body(request, limit), timeout))
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s",
                       headers={"Connection": "close"}) from None


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise bad_request("the body's JSON is nested too deeply") from None
    except ValueError as e:  # not JSON, not UTF-8, or a number of more digits than Python converts
        raise bad_request(f"the body is not valid JSON ({e})") from None


def reader(model: type[Model]) -> Callable[[Any], Model]:
    return lambda body: parse(model, body)


def parse(model: type[Model], body: Any) -> Model:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None


def create_app(state: ServerState) -> Starlette:
    config = state.options

    def route(handler: Handler, open_route: bool = False, errors: Callable[[ApiError], Response] = error_response
              ) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                if not open_route:
                    _authorize(request, config.api_key)
                return await handler(request)
            except ApiError as e:
                return errors(e)
            except ClientDisconnect:  # gone while sending its body: nobody to answer, nothing to log
                return Response(status_code=400)

        return guarded

    async def health(request: Request) -> Response:
        if state.loaded is None:
            status = {"status": "loading"} if state.error is None else {"status": "error", "error": state.error}
            return JSONResponse(status, status_code=503)
        decoder = state.loaded.runtime.decoder
        reading = [{"done": done, "total": total} for done, total in decoder.reading()]
        body = {"status": "ok", "slots": decoder.slot_count, "slots_busy": decoder.active, "queued": decoder.queued,
                "reading_prompts": reading}
        if isinstance(decoder, EnginePool):
            body["engines"] = decoder.status()
            if not decoder.slot_count:  # every engine is out: nothing can be answered now
                return JSONResponse({**body, "status": "error", "error": "no engine is answering"}, status_code=503)
        return JSONResponse(body)

    def model_object() -> dict[str, Any]:
        return {"id": state.model_id, "object": "model", "created": int(state.started), "owned_by": "glm4-local"}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object()]})

    async def one_model(request: Request) -> Response:
        return JSONResponse(model_object())  # any id: one model answers every name

    async def run(request: Request, plan: Plan, loaded: Loaded) -> Response:
        job = Run(plan, loaded.runtime, loaded.scheduler, state.model_id)
        logged(request, job.usage)
        if plan.stream:
            return EventStream(job)
        return JSONResponse(await job.response(request))

    large_requests = asyncio.Semaphore(LARGE_AT_ONCE)

    async def planned(request: Request, read: Callable[[Any], Model], make_plan: Callable[[Model], Plan]
                      ) -> tuple[Model, Plan]:
        """The request read (`read`: the decoded body to the request), checked and planned (rendering and
        tokenizing in a worker thread: a custom template runs in a child process); large bodies a few at a
        time, so their memory stays bounded."""
        body = await read_body(request, config.max_body, config.client_timeout)
        arriving = state.loaded.scheduler.arriving() if state.loaded is not None else contextlib.nullcontext()
        async with large_requests if len(body) > LARGE_BODY else contextlib.nullcontext():
            with arriving:
                asked = read(decode_json(body))
                return asked, await run_in_threadpool(make_plan, asked)

    async def chat_completions(request: Request) -> Response:
        loaded = state.model()

        def make_plan(chat: ChatRequest) -> Plan:
            return chat_plan(chat, loaded.runtime, loaded.facts, loaded.defaults, config.default_max_tokens)

        asked, plan = await planned(request, reader(ChatRequest), make_plan)
        if state.tools is None or not state.tools.runs_any(plan.tools):
            return await run(request, plan, loaded)
        if plan.top_logprobs is not None:  # the reply is several of the model's, with tool output between
            raise bad_request("logprobs: not given for a reply the server's own tools take part in; ask without "
                              "them, or offer the tools as functions the client runs", "logprobs")
        _refuse_other_pages(request)
        tool_run = ToolRun(asked, plan, make_plan, lambda p: Run(p, loaded.runtime, loaded.scheduler, state.model_id),
                           state.tools, state.model_id, file_url)
        logged(request, lambda: total_usage(tool_run.runs))
        await tool_run.open()  # 503 before any response starts when the server has no room for its tools
        if plan.stream:
            return EventStream(tool_run, tool_run.events(), tool_run.release)
        try:
            return JSONResponse(await tool_run.response(request))
        finally:
            await tool_run.release()

    async def completions(request: Request) -> Response:
        loaded = state.model()
        _, plans = await planned(request, reader(CompletionRequest),
                                 lambda text: completion_plans(text, loaded.runtime, loaded.defaults,
                                                               config.default_max_tokens))
        if len(plans) == 1:
            return await run(request, plans[0], loaded)
        batch = Batch(plans, lambda p: Run(p, loaded.runtime, loaded.scheduler, state.model_id), state.model_id)
        logged(request, batch.usage)
        if plans[0].stream:
            return EventStream(batch, batch.events())
        return JSONResponse(await batch.response(request))

    def responses_plan(asked: ResponsesRequest, loaded: Loaded) -> Plan:
        try:
            return chat_plan(chat_request(asked), loaded.runtime, loaded.facts, loaded.defaults,
                             config.default_max_tokens)
        except ApiError as e:
            raise renamed(e) from None

    async def responses(request: Request) -> Response:
        loaded = state.model()
        asked, plan = await planned(request, reader(ResponsesRequest), lambda asked: responses_plan(asked, loaded))
        shape = ResponseShape(Run(plan, loaded.runtime, loaded.scheduler, state.model_id), asked, state.model_id)
        logged(request, shape.run.usage)
        if asked.stream:
            return EventStream(shape.run, shape.events())
        return JSONResponse(await shape.whole(request))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(prometheus_text(state.loaded.scheduler if state.loaded else None),
                                 media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind))

    async def read_json(request: Request) -> Any:
        return decode_json(await read_body(request, config.max_body, config.client_timeout))

    def document_tokens(document: dict[str, str]) -> int:  # in the form the model's family writes it
        runtime = state.model().runtime
        return len(runtime.vocab.text_tokens(runtime.vocab.family.replies.with_documents([document], "")))

    def context_tokens() -> int | None:  # each slot's, what one request may hold
        return state.loaded.runtime.n_ctx if state.loaded else None

    api = [("/models", models, "GET"), ("/models/{model_id:path}", one_model, "GET"),
           ("/chat/completions", chat_completions, "POST"), ("/completions", completions, "POST"),
           ("/responses", responses, "POST")]
    routes = [
        Route("/health", route(health, open_route=True), methods=["GET"]),
        Route("/metrics", route(metrics), methods=["GET"]),
        # under /v1, and without it as llama.cpp's server also answers (clients given a bare base URL)
        *(Route(prefix + path, route(handler), methods=[method]) for prefix in ("/v1", "") for path, handler, method
          in api),
        *page_routes(route, state, document_tokens, read_json, context_tokens),
        *tokenizer_routes(route, state.model, read_json),
        *embedding_routes(route, state.model, state.model_id, read_json),
        *ollama_routes(lambda handler: route(handler, errors=ollama_error), state, planned, read_json,
                       lambda run, lines: EventStream(run, lines, media_type="application/x-ndjson")),
    ]
    middleware = [Middleware(EndsWhenStopped)]
    if state.request_log:
        middleware.append(Middleware(RequestLog, writer=state.request_log))
    middleware.append(Middleware(BrowserGuard, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins))
    if config.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})


def _refuse_other_pages(request: Request) -> None:
    """Tools the server runs (code, page loads) run only for the user: a page of another origin is not,
    even where --cors-origin lets it use the model."""
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(origin, request.headers.get("host", "")):
        raise ApiError(403, f"the server's tools run only for its own page and for clients that are not web "
                            f"pages; not for {origin}", code="origin_not_allowed")


class EventStream(StreamingResponse):
    """A run's stream (server-sent events, or Ollama's JSON lines); however the response ends (done, client
    gone before or while streaming, shutdown), its job is stopped and its slot freed, and `closing` (if
    given) awaited. A client that leaves is noticed at once, not at the next event sent: while a prompt is
    read or a tool runs, nothing is sent for a long time (Starlette listens for it only under ASGI before 2.4)."""

    def __init__(self, run: Run | ToolRun | Batch, events: AsyncIterator[bytes] | None = None,
                 closing: Callable[[], Awaitable[None]] | None = None, media_type: str = "text/event-stream") -> None:
        super().__init__(events or run.events(), media_type=media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.run = run
        self.closing = closing

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        watcher = asyncio.ensure_future(self._abandon_when_gone(receive))
        try:
            await super().__call__(scope, receive, send)
        finally:
            watcher.cancel()
            self.run.abandon()
            if self.closing is not None:
                await self.closing()

    async def _abandon_when_gone(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            continue
        self.run.abandon()


def logged(request: Request, usage: Callable[[], dict[str, Any]]) -> None:
    """The request log's token counts for this request come from `usage` (when there is a log)."""
    holder = request.scope.get("state", {}).get("glm4_usage")
    if isinstance(holder, RequestUsage):
        holder.usage = usage


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key (send it as 'Authorization: Bearer KEY')",
                       code="invalid_api_key")

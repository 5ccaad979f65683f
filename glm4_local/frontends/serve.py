"""`glm4-local serve`: check the model, start reading it, bind the port, answer /health at once, then serve."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts, load_runtime, model_sampling
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama.embedder import Embedder
from glm4_local.frontends.model_plan import ModelPlan, plan_serving, size_text
from glm4_local.server.options import AUTO_SLOTS, LOCAL_HOSTS, ServeOptions

if TYPE_CHECKING:
    from glm4_local.chat.runtime import ChatRuntime
    from glm4_local.server.tool_sessions import ToolSessions

GRACEFUL_SHUTDOWN_SECONDS = 3


def exposure_warning(host: str, api_key: str | None) -> str | None:
    if host in LOCAL_HOSTS or api_key is not None:
        return None
    return f"listening on {host} without an API key: anyone who can reach this port can use the model"


def listen(host: str, port: int) -> socket.socket:
    """The bound socket (port 0: a free one), or one clear error."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # TCP named as the protocol: asyncio turns Nagle's algorithm off only on sockets that say so, and with it
        # on, every reply after a connection's first waits for the client's delayed ACK (40 ms on Linux)
        sock = socket.socket(info[0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as e:
        raise Glm4LocalError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str, path: str = "/v1") -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


def _tools_line(tools: ToolSessions) -> str:
    names = [t.get("type") if t.get("type") != "function" else t["function"]["name"] for t in tools.offered()]
    return (f"tools run here for requests that list them: {', '.join(map(str, names))} (a conversation's kernel "
            f"and pages end {tools.idle_seconds:g} s after its last request; at most {tools.max_conversations} "
            "conversations at once)")


def _engines_line(runtime: ChatRuntime) -> str:
    from glm4_local.server.engine_pool import EnginePool

    pool = runtime.decoder
    assert isinstance(pool, EnginePool)
    return "; ".join(f"{e['url']} ({e['slots']} slot(s) × {e['slot_context']:,} tokens)" if e["status"] == "ok"
                     else f"{e['url']} (out: {e['problem']})" for e in pool.status())


def _quiet_exit_server(config: object) -> object:
    """A uvicorn server that stops on SIGINT/SIGTERM and returns (uvicorn re-raises the signal after its
    shutdown, which would skip freeing the model and exit by signal)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return Server(config)  # type: ignore[arg-type]


class _Loading:
    """The model and its decoder, read by llama.cpp in a thread of their own from the moment the plan is
    known: llama.cpp reads without holding Python's lock, so the server's modules import and the port is
    bound meanwhile (launch → /health 200 1.09 → 1.01 s on a small model with GLM-4's vocabulary)."""

    def __init__(self, load: Callable[[], ChatRuntime]) -> None:
        self._runtime: ChatRuntime | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._load, args=(load,), name="glm4-local-loader", daemon=True)
        self._thread.start()

    def _load(self, load: Callable[[], ChatRuntime]) -> None:
        try:
            self._runtime = load()
        except BaseException as e:  # given to whoever takes the result
            self._error = e

    def take(self) -> ChatRuntime:
        """The loaded runtime (its owner now closes it); the load's error if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._runtime is not None
        self._taken = True
        return self._runtime

    def discard(self) -> None:
        """Free what was loaded, unless it was taken."""
        self._thread.join()
        if self._runtime is not None and not self._taken:
            self._runtime.decoder.close()


def serve(model_path: Path, runtime: RuntimeOptions, options: ServeOptions, say: Callable[[str], None],
          warn: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM; Glm4LocalError if the model cannot be loaded or the port bound."""
    load: Callable[[], ChatRuntime]
    if options.engines:
        facts = _engine_front(model_path, runtime, options, warn)
        decoding = f"decoding on {len(options.engines)} engine(s): {', '.join(options.engines)}"
        load = functools.partial(_engine_runtime, facts, options, warn)
    else:
        plan = plan_serving(model_path, runtime, warn, options.parallel, AUTO_SLOTS)
        facts, decoding = plan.facts, _local_decoding(plan, options.kv_unified)
        load = functools.partial(load_runtime, plan.facts, plan.options, slots=plan.context.slots,
                                 shared_kv=options.kv_unified)
    # loaded first, alone: llama-cpp-python silences the whole process while a Llama loads
    embedder = Embedder(options.embedding_model, runtime.threads) if options.embedding_model else None
    loading = _Loading(load)
    try:
        _serve_while_loading(facts, decoding, loading, embedder, options, say, warn)
    finally:
        loading.discard()
        if embedder is not None:
            embedder.close()


def _local_decoding(plan: ModelPlan, shared_kv: bool) -> str:
    shared = ", one KV buffer for all slots" if shared_kv and plan.context.slots > 1 else ""
    return (f"{plan.context.slots} slot(s) × {plan.n_ctx:,} tokens of context, KV cache "
            f"{size_text(plan.kv_cache_bytes)}{shared}{', flash attention' if plan.options.flash_attention else ''}")


# what the engines' own flags decide when serve decodes on engines: these are not used then
_ENGINE_DECIDES = {"ctx_given": "--ctx", "gpu_layers": "--gpu-layers", "flash_attn": "--flash-attn",
                   "cache_type_k": "--cache-type-k", "cache_type_v": "--cache-type-v", "prompt_cache": "--cache-dir",
                   "speculation": "--speculate", "mlock": "--mlock", "mmap": "--no-mmap", "batch": "--batch",
                   "huge_pages": "--huge-pages"}


def _engine_front(model_path: Path, runtime: RuntimeOptions, options: ServeOptions,
                  warn: Callable[[str], None]) -> ModelFacts:
    defaults = replace(RuntimeOptions(), ctx_given=False, prompt_cache_bytes=runtime.prompt_cache_bytes)
    unused = [flag for name, flag in _ENGINE_DECIDES.items() if getattr(runtime, name) != getattr(defaults, name)]
    unused += ["--parallel"] if options.parallel != ServeOptions().parallel else []
    if unused:
        warn(f"{', '.join(unused)} not used with --engine: each engine's own llama-server flags decide them")
    return ModelFacts.read(model_path)


def _engine_runtime(facts: ModelFacts, options: ServeOptions, warn: Callable[[str], None]) -> ChatRuntime:
    from glm4_local.server.engine_pool import engine_runtime

    return engine_runtime(facts, list(options.engines), options.engine_key, warn)


def _prepare_first_request(facts: ModelFacts) -> None:
    """What the first request would otherwise wait for, done while llama.cpp reads the model: anyio's asyncio
    backend, which anyio imports when the first request is planned in one of its worker threads, and the chat
    template's compilation (with a custom template, its worker process). Together ~45 ms of a fresh server's
    first time to first token on 2 cores."""
    with contextlib.suppress(ImportError):
        importlib.import_module("anyio._backends._asyncio")
    with contextlib.suppress(Glm4LocalError):  # a template that cannot render says so at the request
        _ = facts.template.reply_head


def _serve_while_loading(facts: ModelFacts, decoding: str, loading: _Loading, embedder: Embedder | None,
                         options: ServeOptions, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    # the server's modules, imported while llama.cpp reads the model
    import uvicorn

    from glm4_local.frontends.tool_setup import server_tools
    from glm4_local.server.app import Loaded, ServerState, create_app
    from glm4_local.server.outbox import HAND_OVER_SECONDS
    from glm4_local.server.request_log import LineWriter
    from glm4_local.server.scheduler import COALESCE_SECONDS, Scheduler
    from glm4_local.server.timeouts import MAX_CONNECTIONS, timed_protocol

    _prepare_first_request(facts)
    if warning := exposure_warning(options.host, options.api_key):
        warn(warning)
    tools = server_tools(options.tools, facts.family.replies.built_in, options.tool_idle,
                         options.tool_conversations, warn)
    try:
        sock = listen(options.host, options.port)
    except BaseException:
        if tools is not None:
            tools.close()
        raise
    state = ServerState(facts.path.stem, options, facts.family, tools=tools,
                        request_log=None if options.quiet else LineWriter(say))
    server: Any = _quiet_exit_server(uvicorn.Config(create_app(state), log_level="warning", lifespan="off",
                                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                                                    http=timed_protocol(options.client_timeout),
                                                    limit_concurrency=MAX_CONNECTIONS))
    say(f"serving {facts.path.name} as \"{state.model_id}\" on {url_of(sock, options.host)} ({decoding}); loading…")
    if tools is not None:
        say(_tools_line(tools))
    say(f"chat page: {url_of(sock, options.host, '/')}")
    if embedder is not None:
        say(f"embeddings: {embedder.name} ({embedder.dimensions} dimensions)")

    def load() -> None:
        try:
            loaded = loading.take()
            # tokens from engines come over HTTP, no llama_decode here waits on the event loop: handed over at once;
            # the engines gather their own arrivals
            in_process = not options.engines
            scheduler = Scheduler(loaded, options.max_queue, HAND_OVER_SECONDS if in_process else 0.0,
                                  COALESCE_SECONDS if in_process else 0.0)
            scheduler.start()
            state.loaded = Loaded(facts, loaded, scheduler, model_sampling(facts), embedder)
            if options.engines:
                say(f"engines: {_engines_line(loaded)}")
            say("ready")
        except Exception as e:  # the server must stop with the reason, never serve "loading" forever
            state.error = str(e) if isinstance(e, Glm4LocalError) else f"could not load the model ({e!r})"
            server.should_exit = True

    loader = threading.Thread(target=load, name="glm4-local-loader", daemon=True)
    loader.start()
    logging.getLogger("glm4_local.server").addHandler(logging.StreamHandler())
    try:
        server.run(sockets=[sock])
    finally:
        loader.join(timeout=60)
        if state.loaded is not None:
            state.loaded.scheduler.stop()
            state.loaded.runtime.decoder.close()
        if tools is not None:
            tools.close()
        if state.request_log is not None:
            state.request_log.close()
        sock.close()
    if state.error is not None:
        raise Glm4LocalError(state.error)

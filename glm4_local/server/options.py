"""How `serve` listens and whom it serves: the options' one declaration, defaults and help beside each
field (the command line builds its flags from them, cli_options.SERVE_OPTIONS), checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.options import ToolOptions, flag

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_BODY_MB = 8.0
DEFAULT_CLIENT_TIMEOUT = 30.0  # seconds for a request's headers, and again for its body
DEFAULT_MAX_QUEUE = 64
DEFAULT_IDLE_SECONDS = 15 * 60.0
DEFAULT_MAX_CONVERSATIONS = 32
DEFAULT_MAX_TOKENS = 4096  # a reply's cap when the request sets none
AUTO_SLOTS = 3  # slots `serve` takes by default where memory holds each the context one slot would get: a
# reply someone watches never waits behind an app's background requests (titles, tags, follow-ups)


def engine_url_problem(url: str) -> str | None:
    """What is wrong with an engine's address (None: nothing)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "an engine is named by its http:// address, e.g. http://gpu-box:8080"
    if parts.path.strip("/") or parts.query or parts.fragment:
        return "name the engine's address alone (no path: /completion and the others are llama-server's own)"
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        return "its port is not a number from 1 to 65535"
    return None


@dataclass(frozen=True)
class ServeOptions:
    host: str = field(default="127.0.0.1", metadata=flag(
        "--host", "Address to listen on (another than 127.0.0.1 exposes the model to your network)."))
    port: int = field(default=8000, metadata=flag("--port", "Port (0: any free one).", min=0, max=65535))
    api_key: str | None = field(default=None, metadata=flag(
        "--api-key", "Require 'Authorization: Bearer KEY' on every route but /health.", envvar="GLM4_LOCAL_API_KEY"))
    parallel: int = field(default=0, metadata=flag(
        "--parallel", f"Requests decoded together (each slot keeps its own context and prompt cache); 0: up to "
        f"{AUTO_SLOTS} where memory holds each the full context, else 1.", min=0, max=64))
    kv_unified: bool = field(default=False, metadata=flag(
        "--kv-unified", "One KV buffer for all slots (llama-server's --kv-unified): a new request takes a prefix "
        "another slot holds without copying it. Default: a buffer per slot, each slot's attention over its own "
        "cells only (faster).", None))
    max_queue: int = field(default=DEFAULT_MAX_QUEUE, metadata=flag(
        "--max-queue", "Requests that may wait for a slot; more get 503 with Retry-After.", min=1))
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=flag(
        "--allowed-host", "A name clients may reach the server by, besides localhost and IP addresses "
        "(repeatable).", "NAME"))
    cors_origins: tuple[str, ...] = field(default=(), metadata=flag(
        "--cors-origin", "Allow browser pages from this origin (repeatable; '*' for any).", "ORIGIN"))
    max_body_mb: float = field(default=DEFAULT_MAX_BODY_MB, metadata=flag(
        "--max-body-mb", "Largest request body, in MiB.", min=0.001))
    client_timeout: float = field(default=DEFAULT_CLIENT_TIMEOUT, metadata=flag(
        "--client-timeout", "Seconds a client has to send a request's headers, and again its body; slower ones "
        "are cut off."))
    tool_idle: float = field(default=DEFAULT_IDLE_SECONDS, metadata=flag(
        "--tool-idle", "A conversation's kernel, files and pages end this long after its last request.",
        "SECONDS"))
    tool_conversations: int = field(default=DEFAULT_MAX_CONVERSATIONS, metadata=flag(
        "--tool-conversations", "Conversations whose tools (a kernel each) may exist at once; past it a new one "
        "is refused (503) until one ends.", "N", min=1))
    default_max_tokens: int = field(default=DEFAULT_MAX_TOKENS, metadata=flag(
        "--default-max-tokens", "Most tokens in a reply when a request sets no max_tokens (apps send background "
        "requests without one); 0: as many as the context holds.", "N", min=0))
    embedding_model: Path | None = field(default=None, metadata=flag(
        "--embedding-model", "An embedding GGUF (e.g. bge-m3) to answer /v1/embeddings and Ollama's /api/embed with; "
        "GLM-4 itself makes no embeddings.", "FILE"))
    engines: tuple[str, ...] = field(default=(), metadata=flag(
        "--engine", "A llama.cpp llama-server (http://HOST:PORT) running this same GGUF, to decode on instead of "
        "this machine (repeatable: conversations go to the engine holding their prefix, else the least loaded).",
        "URL"))
    engine_key: str | None = field(default=None, metadata=flag(
        "--engine-key", "The API key the engines were started with (llama-server --api-key).",
        envvar="GLM4_LOCAL_ENGINE_KEY"))
    quiet: bool = field(default=False, metadata=flag(
        "--quiet", "No line per request on stderr (who, route, status, tokens, time).", None, "-q"))
    tools: ToolOptions = field(default_factory=ToolOptions)  # what the server runs for its clients (the page's tools)

    def __post_init__(self) -> None:
        if self.parallel < 0:
            raise Glm4LocalError(f"parallel slots must be at least 1 (0: as many as fit), not {self.parallel}")
        if not self.client_timeout > 0:
            raise Glm4LocalError(f"the client timeout must be positive, not {self.client_timeout}")
        if not self.max_body_mb > 0:
            raise Glm4LocalError(f"the largest request body must be positive, not {self.max_body_mb} MiB")
        if self.max_queue < 1:
            raise Glm4LocalError(f"the waiting queue must hold at least 1 request, not {self.max_queue}")
        if self.api_key is not None and not self.api_key.strip():
            raise Glm4LocalError("the API key is empty")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            raise Glm4LocalError("the API key must be printable ASCII (HTTP headers carry nothing else, so no "
                                 "client could ever send it)")
        if self.tools.any and self.host not in LOCAL_HOSTS and self.api_key is None:
            raise Glm4LocalError(f"--python, --browser and --mcp run code and fetch pages for whoever can reach "
                                 f"the server: on --host {self.host} they need --api-key")
        if self.engine_key is not None and not (self.engine_key.isascii() and self.engine_key.isprintable()
                                                and self.engine_key.strip()):
            raise Glm4LocalError("the engines' API key must be printable ASCII")
        for url in self.engines:
            if problem := engine_url_problem(url):
                raise Glm4LocalError(f"--engine {url}: {problem}")
        if not self.tool_idle > 0:
            raise Glm4LocalError(f"--tool-idle must be positive, not {self.tool_idle}")
        if self.tool_conversations < 1:
            raise Glm4LocalError(f"--tool-conversations must be at least 1, not {self.tool_conversations}")

    @property
    def max_body(self) -> int:
        """The largest request body, in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

"""Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version`, ...) over
the same pipeline: a request becomes the chat or text request that asks for the same reply (the same
checks, template, tool calls and limits), and the reply goes back in Ollama's shapes: newline-delimited
JSON when streamed (the default), `done`/`done_reason`, nanosecond durations, token counts, tool calls
with their arguments as objects, a reasoning model's thoughts as `thinking`. Errors are `{"error": ...}`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import gguf
from pydantic import ValidationError
from starlette.requests import Request

from glm4_local.chat.setup import ModelFacts
from glm4_local.server.completions import CONTENT, Run
from glm4_local.server.protocol import ApiError, ChatRequest, CompletionRequest, bad_request, validation_error
from glm4_local.server.replies import Outcome
from glm4_local.server.shapes import tool_call_object

UNTIL_FULL = 2**31 - 1  # as many tokens as the context has room for
API_VERSION = "0.12.0"  # the version of Ollama's API these routes answer as (what /api/version says)
# options -> the chat request's sampling fields (num_predict: max_tokens; -1 and -2: the context's room)
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop", "num_predict": "max_tokens"}
# how to load the model, accepted and left alone: the server's own flags (--ctx, --threads, ...) hold for every
# request; a sampling option not above is refused by name (it would otherwise sample differently unsaid)
_IGNORED_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "num_thread", "num_keep", "use_mmap", "use_mlock",
                              "numa", "low_vram", "main_gpu"})


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's `options` (and `format`, `think`) as chat-request fields; an option we do not know is named."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise bad_request("options: must be an object", "options")
    fields: dict[str, Any] = {}
    for name, value in options.items():
        if name in _OPTIONS:
            if name == "num_predict" and isinstance(value, int) and value < 0:
                value = UNTIL_FULL  # -1: until the context is full (not the server's default cap); -2: the same
            fields[_OPTIONS[name]] = value
        elif name not in _IGNORED_OPTIONS:
            raise bad_request(f"options.{name}: not an option this server knows", f"options.{name}")
    form = body.get("format")
    if form == "json":
        fields["response_format"] = {"type": "json_object"}
    elif isinstance(form, dict):
        fields["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": form}}
    elif form not in (None, ""):
        raise bad_request("format: \"json\" or a JSON schema", "format")
    if body.get("think") is not None:
        fields["think"] = body["think"]
    return fields


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """Ollama's calls (arguments as objects) as OpenAI's (arguments as JSON text)."""
    if not isinstance(calls, list):
        raise bad_request(f"{where}: must be a list", where)
    converted = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise bad_request(f"{where}[{i}]: needs a \"function\"", f"{where}[{i}]")
        arguments = function.get("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        converted.append({"id": f"call_{i}", "type": "function",
                          "function": {"name": function.get("name"), "arguments": text}})
    return converted


def _message(message: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where}: must be an object", where)
    if message.get("images"):
        raise bad_request(f"{where}.images: this model reads text only", f"{where}.images")
    converted = {"role": message.get("role"), "content": message.get("content")}
    if message.get("tool_calls"):
        converted["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    if isinstance(message.get("thinking"), str):
        converted["reasoning_content"] = message["thinking"]  # kept, never fed back (the family drops it)
    return converted


def _validated(model: type[ChatRequest] | type[CompletionRequest], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None


def chat_request(body: Any) -> ChatRequest:
    """/api/chat's request as the chat request that asks for the same reply."""
    body = _object(body)
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise bad_request("messages: must be a list", "messages")
    request: dict[str, Any] = {"messages": [_message(m, i) for i, m in enumerate(messages)],
                               "stream": body.get("stream", True) is not False, **_sampling(body)}
    if body.get("tools"):
        request["tools"] = body["tools"]
    return _validated(ChatRequest, request)


def generate_request(body: Any) -> ChatRequest | CompletionRequest:
    """/api/generate's: a prompt in the model's template (with `system`), or `raw` text as it is."""
    body = _object(body)
    for refused, why in (("images", "this model reads text only"), ("suffix", "fill-in-the-middle is not supported"),
                         ("template", "the model's own template is used"), ("context", "send the conversation "
                                                                                       "to /api/chat instead")):
        if body.get(refused):
            raise bad_request(f"{refused}: {why}", refused)
    prompt = body.get("prompt") or ""
    fields = {"stream": body.get("stream", True) is not False, **_sampling(body)}
    if body.get("raw"):
        fields.pop("think", None)
        return _validated(CompletionRequest, {"prompt": prompt, **fields})
    messages = ([{"role": "system", "content": body["system"]}] if body.get("system") else []) + \
        [{"role": "user", "content": prompt}]
    return _validated(ChatRequest, {"messages": messages, **fields})


class OllamaReply:
    """One reply in Ollama's shapes: whole (`whole`) or as newline-delimited JSON (`lines`)."""

    def __init__(self, run: Run, model: str, chat: bool) -> None:
        self.run, self.model, self.chat = run, model, chat
        self.started = time.perf_counter()

    def _piece(self, content: str, thinking: str = "") -> dict[str, Any]:
        if not self.chat:
            return {"response": content, **({"thinking": thinking} if thinking else {})}
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        return {"message": message}

    def _line(self, fields: dict[str, Any], done: bool) -> dict[str, Any]:
        return {"model": self.model, "created_at": now(), **fields, "done": done}

    def _final(self, outcome: Outcome, content: str, thinking: str) -> dict[str, Any]:
        """The last object: what is left of the reply (a call, whole), why it ended, counts and times."""
        piece = self._piece(content, thinking)
        if outcome.tool_call is not None and self.chat:
            function = tool_call_object(outcome.tool_call)["function"]
            try:
                arguments = json.loads(function["arguments"])
            except json.JSONDecodeError:  # a call cut by num_predict: its text as far as it was written
                arguments = function["arguments"]
            piece["message"]["tool_calls"] = [{"function": {"name": function["name"], "arguments": arguments}}]
        job, usage = self.run.job, self.run.usage()
        prompt_seconds = max(0.0, (job.first_token_at or job.last_token_at) - job.started_at)
        eval_seconds = max(0.0, job.last_token_at - (job.first_token_at or job.last_token_at))
        reason = "length" if outcome.finish_reason == "length" else "stop"
        return self._line(piece, True) | {
            "done_reason": reason, "total_duration": int((time.perf_counter() - self.started) * 1e9),
            "load_duration": 0, "prompt_eval_count": usage["prompt_tokens"],
            "prompt_eval_duration": int(prompt_seconds * 1e9), "eval_count": usage["completion_tokens"],
            "eval_duration": int(eval_seconds * 1e9)}

    async def whole(self, request: Request) -> dict[str, Any]:
        content, outcome = await self.run.collect(request)
        return self._final(outcome, content, outcome.reasoning)

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for channel, text in self.run.deltas():
                piece = self._piece(text) if channel == CONTENT else self._piece("", text)
                yield _ndjson(self._line(piece, False))
            outcome = self.run.outcome()
            yield _ndjson(self._final(outcome, outcome.tail, ""))
        except ApiError as e:  # a generation that failed after the stream began: said in Ollama's way
            yield _ndjson({"error": e.message})
        finally:
            self.run.abandon()


def _ndjson(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode()


def details(facts: ModelFacts) -> dict[str, Any]:
    """What Ollama says of a model: format, family, size in parameters, quantization."""
    try:
        quantization = gguf.LlamaFileType(facts.header.get(gguf.Keys.General.FILE_TYPE)).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        quantization = "unknown"
    parameters = sum(t.n_elements for t in facts.header.tensors)
    arch = facts.family.arch_name
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": f"{parameters / 1e9:.1f}B" if parameters >= 1e8 else f"{parameters / 1e6:.1f}M",
            "quantization_level": quantization}


def model_entry(facts: ModelFacts, name: str) -> dict[str, Any]:
    """The model as /api/tags and /api/ps list it. Its digest names the file (path, size and time), not its
    bytes: hashing gigabytes to list one model would take a minute."""
    stat = facts.path.stat()
    digest = hashlib.sha256(f"{facts.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return {"name": name, "model": name, "modified_at": _modified(stat.st_mtime), "size": stat.st_size,
            "digest": digest, "details": details(facts)}


def _modified(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


def show(facts: ModelFacts, n_ctx: int) -> dict[str, Any]:
    """/api/show: the template, details, the header's numbers, and what the model can do."""
    arch = facts.family.arch_name
    info = {"general.architecture": arch, f"{arch}.context_length": facts.hparams.context_length,
            f"{arch}.block_count": facts.hparams.n_layer, f"{arch}.attention.head_count_kv": facts.hparams.n_head_kv}
    reasons = bool(facts.family.replies.skip_reasoning(facts.template.reply_head))
    capabilities = ["completion", "tools"] + (["thinking"] if reasons else [])
    return {"modelfile": "", "parameters": f"num_ctx {n_ctx}", "template": facts.template.source,
            "details": details(facts), "model_info": info, "capabilities": capabilities,
            "modified_at": _modified(facts.path.stat().st_mtime)}

"""OpenAI's Responses API (`/v1/responses`), stateless as Ollama's: the request becomes a chat request
(the same checks, template and tool calls), and the reply comes back as output items, whole or as the
Responses event stream. `previous_response_id` is refused: this server keeps no conversations."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from glm4_local.server.completions import CONTENT, REASONING, Run
from glm4_local.server.protocol import ApiError, ChatRequest, ResponsesRequest, bad_request, validation_error
from glm4_local.server.replies import Outcome
from glm4_local.server.shapes import tool_call_object

_TEXT_PARTS = ("input_text", "output_text", "text")
# chat field -> the Responses field that holds it, for error messages
_FIELDS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format",
           "tool_choice": "tool_choice", "tools": "tools"}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str)):
                raise bad_request(f"{where}[{i}]: only text parts are supported", f"{where}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{where}: must be text or a list of text parts", where)


def _message(item: Any, i: int) -> dict[str, Any]:
    """One input item as a chat message."""
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise bad_request(f"{where}: must be an object", where)
    kind = item.get("type", "message")
    if kind == "message":
        return {"role": item.get("role"), "content": _text(item.get("content"), f"{where}.content")}
    if kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "tool_call_id": item.get("call_id"),
                "content": output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)}
    raise bad_request(f"{where}.type: {kind!r} items are not supported", f"{where}.type")


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(f"tools[{i}]: only function tools are supported", f"tools[{i}].type")
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def chat_request(request: ResponsesRequest) -> ChatRequest:
    """The chat request that asks for the same reply."""
    if request.previous_response_id is not None:
        raise bad_request("previous_response_id: this server keeps no responses; send the whole conversation "
                          "as input", "previous_response_id")
    items = [{"role": "user", "content": request.input}] if isinstance(request.input, str) else request.input
    messages = [_message(item, i) for i, item in enumerate(items)]
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    body: dict[str, Any] = {"messages": messages, "stream": request.stream, "stream_options": {"include_usage": True}}
    if request.tools:
        body["tools"] = _tools(request.tools)
    choice = request.tool_choice
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    if choice is not None:
        body["tool_choice"] = choice
    form = request.text.format if request.text else None
    if form is not None and form.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": form.name or "answer",
                                                                          "schema": form.schema_}}
    elif form is not None:
        body["response_format"] = {"type": form.type}
    if (alternatives := request.logprob_alternatives()) is not None:
        body |= {"logprobs": True, "top_logprobs": alternatives}
    for chat_field, value in (("temperature", request.temperature), ("top_p", request.top_p),
                              ("max_tokens", request.max_output_tokens), ("seed", request.seed)):
        if value is not None:
            body[chat_field] = value
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None


def renamed(error: ApiError) -> ApiError:
    """A chat-request error in the Responses request's own field names."""
    if error.param:
        head, sep, rest = error.param.partition("[") if error.param.startswith("messages") else \
            error.param.partition(".")
        if head in _FIELDS:
            error.param = _FIELDS[head] + sep + rest
    return error


class ResponseShape:
    """The fields of one response, its output items and usage."""

    def __init__(self, run: Run, request: ResponsesRequest, model_id: str) -> None:
        self.run, self.request, self.model_id = run, request, model_id
        self.id = f"resp_{uuid.uuid4().hex[:24]}"
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.reasoning_id = f"rs_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.sequence = 0  # events so far, numbered from 1
        self.scores: list[dict[str, Any]] = []  # the output text's log-probabilities, when included

    def body(self, status: str, output: list[dict[str, Any]], outcome: Outcome | None) -> dict[str, Any]:
        cut = outcome is not None and outcome.finish_reason == "length"
        used = self.run.usage()
        usage = None if outcome is None else {
            "input_tokens": used["prompt_tokens"], "input_tokens_details": used["prompt_tokens_details"],
            "output_tokens": used["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": used["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": used["total_tokens"]}
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": "incomplete" if cut else status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "instructions": self.request.instructions, "max_output_tokens": self.request.max_output_tokens,
                "model": self.model_id, "output": output, "parallel_tool_calls": False,
                "previous_response_id": None, "temperature": self.request.temperature,
                "top_p": self.request.top_p, "tool_choice": self.request.tool_choice or "auto",
                "tools": self.request.tools or [], "text": {"format": self._format()}, "usage": usage,
                "top_logprobs": self.request.top_logprobs, "metadata": self.request.metadata or {}}

    def _format(self) -> dict[str, Any]:
        form = self.request.text.format if self.request.text else None
        return form.model_dump(by_alias=True, exclude_none=True) if form else {"type": "text"}

    def message(self, text: str, status: str = "completed") -> dict[str, Any]:
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                "content": [self._part(text)]}

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": self.scores}

    def call(self, outcome: Outcome, status: str = "completed") -> dict[str, Any]:
        assert outcome.tool_call is not None
        call = tool_call_object(outcome.tool_call)
        return {"type": "function_call", "id": f"fc_{call['id'].removeprefix('call_')}", "call_id": call["id"],
                "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}

    def thoughts(self, text: str, status: str = "completed") -> dict[str, Any]:
        """A reasoning model's thoughts, as an item of their own (OpenAI's open-weight models' shape)."""
        return {"type": "reasoning", "id": self.reasoning_id, "status": status, "summary": [],
                "content": [{"type": "reasoning_text", "text": text}]}

    def output(self, text: str, outcome: Outcome) -> list[dict[str, Any]]:
        items = [self.thoughts(outcome.reasoning)] if outcome.reasoning else []
        items += [self.message(text)] if text or outcome.tool_call is None else []
        return items + ([self.call(outcome)] if outcome.tool_call is not None else [])

    async def whole(self, request: Request) -> dict[str, Any]:
        text, outcome = await self.run.collect(request)
        self._scored(CONTENT, text, final=True)
        return self.body("completed", self.output(text, outcome), outcome)

    def _scored(self, channel: str, text: str, final: bool = False) -> list[dict[str, Any]]:
        """The log-probability entries behind `text`, kept for the output text part too."""
        found = self.run.logprobs(channel, text, final)
        entries = (found or {}).get("content") or []
        self.scores += entries
        return entries

    def event(self, kind: str, **fields: Any) -> bytes:
        self.sequence += 1
        data = json.dumps({"type": kind, "sequence_number": self.sequence, **fields}, ensure_ascii=False)
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _message_opened(self, index: int) -> bytes:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (self.event("response.output_item.added", output_index=index, item=self.message("", "in_progress")
                           | {"content": []})
                + self.event("response.content_part.added", item_id=self.message_id, output_index=index,
                             content_index=0, part=part))

    def _text_delta(self, delta: str, index: int, final: bool = False) -> bytes:
        return self.event("response.output_text.delta", item_id=self.message_id, output_index=index,
                          content_index=0, delta=delta, logprobs=self._scored(CONTENT, delta, final))

    def _message_closed(self, text: str, index: int) -> bytes:
        part = self._part(text)
        return (self.event("response.output_text.done", item_id=self.message_id, output_index=index,
                           content_index=0, text=text, logprobs=self.scores)
                + self.event("response.content_part.done", item_id=self.message_id, output_index=index,
                             content_index=0, part=part)
                + self.event("response.output_item.done", output_index=index, item=self.message(text)))

    def _thoughts_opened(self) -> bytes:
        return self.event("response.output_item.added", output_index=0, item=self.thoughts("", "in_progress")
                          | {"content": []})

    def _thought_delta(self, delta: str) -> bytes:
        return self.event("response.reasoning_text.delta", item_id=self.reasoning_id, output_index=0,
                          content_index=0, delta=delta)

    def _thoughts_closed(self, text: str) -> bytes:
        return (self.event("response.reasoning_text.done", item_id=self.reasoning_id, output_index=0,
                           content_index=0, text=text)
                + self.event("response.output_item.done", output_index=0, item=self.thoughts(text)))

    def _call_events(self, outcome: Outcome, index: int) -> bytes:
        item = self.call(outcome)
        pending = item | {"arguments": "", "status": "in_progress"}
        return (self.event("response.output_item.added", output_index=index, item=pending)
                + self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                             delta=item["arguments"])
                + self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=item["arguments"])
                + self.event("response.output_item.done", output_index=index, item=item))

    async def events(self) -> AsyncIterator[bytes]:
        """The Responses event stream: created, the output items as they are written, then completed
        (or incomplete). A reply that may be a call is held back until it is known (see replies.py)."""
        self.sequence = 0
        yield self.event("response.created", response=self.body("in_progress", [], None))
        yield self.event("response.in_progress", response=self.body("in_progress", [], None))
        text, thought, opened = "", "", False
        try:
            async for channel, delta in self.run.deltas():
                if channel == REASONING:
                    if not thought:
                        yield self._thoughts_opened()
                    thought += delta
                    yield self._thought_delta(delta)
                    continue
                if thought and not opened:
                    yield self._thoughts_closed(thought)
                if not opened:
                    opened = True
                    yield self._message_opened(1 if thought else 0)
                text += delta
                yield self._text_delta(delta, 1 if thought else 0)
            outcome = self.run.outcome()
        except ApiError as e:
            yield self.event("error", code=e.code, message=e.message, param=e.param)
            return
        finally:
            self.run.abandon()
        index = 1 if thought else 0  # the message's place among the output items
        if thought and not opened:
            yield self._thoughts_closed(thought)
        if outcome.tail or (not opened and outcome.tool_call is None):
            if not opened:
                opened = True
                yield self._message_opened(index)
            if outcome.tail:
                text += outcome.tail
                yield self._text_delta(outcome.tail, index, final=True)
        if opened:
            yield self._message_closed(text, index)
        if outcome.tool_call is not None:
            yield self._call_events(outcome, index + 1 if opened else index)
        final = self.body("completed", self.output(text, outcome), outcome)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield self.event(kind, response=final)

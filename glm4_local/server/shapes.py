"""OpenAI's response objects: completions, stream chunks, usage, tool calls."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from glm4_local.core.families.replies import ToolCall
from glm4_local.core.llama.decoder import Job


def usage(job: Job, completion_tokens: int | None = None, reasoning_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage of one job; `completion_tokens`, when a stop string ended it, counts the tokens up to
    the one that completed the stop (what the client was sent and the stop itself), not those the decoder
    had already made after it (how many depends on timing and speculation)."""
    prompt = len(job.prompt)
    completion = len(job.generated) if completion_tokens is None else min(completion_tokens, len(job.generated))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": prompt - job.evaluated_tokens},
            # OpenAI's fields for tokens proposed ahead of the model (its predicted outputs); here, the
            # drafts of prompt-lookup speculation that the model confirmed, and those it did not
            "completion_tokens_details": {"accepted_prediction_tokens": job.accepted,
                                          "rejected_prediction_tokens": job.drafted - job.accepted,
                                          "reasoning_tokens": min(reasoning_tokens, completion)}}


def tool_call_object(call: ToolCall) -> dict[str, Any]:
    return call.as_message()["tool_calls"][0]


@dataclass
class Envelope:
    """The fields every object of one response shares."""

    model: str
    kind: str  # "chat.completion" or "text_completion"
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat.completion" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex[:24]}"

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def chat(self, message: dict[str, Any], finish_reason: str, used: dict[str, Any],
             logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self._base("chat.completion"), "choices": [choice], "usage": used}

    def text(self, text: str, finish_reason: str, used: dict[str, Any],
             logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.texts([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}], used)

    def texts(self, choices: list[dict[str, Any]], used: dict[str, Any]) -> dict[str, Any]:
        return {**self._base("text_completion"), "choices": choices, "usage": used}

    def chunk(self, piece: dict[str, Any] | str, finish_reason: str | None = None,
              with_usage: bool = False, index: int = 0, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """A stream chunk: a chat delta (dict) or completion text (str), of choice `index`."""
        if isinstance(piece, dict):
            body = self._base("chat.completion.chunk")
            choice: dict[str, Any] = {"index": index, "delta": piece, "logprobs": logprobs,
                                      "finish_reason": finish_reason}
        else:
            body = self._base("text_completion")
            choice = {"index": index, "text": piece, "logprobs": logprobs, "finish_reason": finish_reason}
        body["choices"] = [choice]
        if with_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, used: dict[str, Any]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        return {**self._base(kind), "choices": [], "usage": used}


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


DONE = sse("[DONE]")


@dataclass
class Events:
    """One stream's server-sent events, as OpenAI frames them: every chunk in one envelope, with a null
    usage until the last chunk when the client asked for usage."""

    envelope: Envelope
    with_usage: bool

    def chunk(self, piece: dict[str, Any] | str, finish_reason: str | None = None, index: int = 0,
              logprobs: dict[str, Any] | None = None) -> bytes:
        return sse(self.envelope.chunk(piece, finish_reason, self.with_usage, index, logprobs))

    def ending(self, used: dict[str, Any]) -> list[bytes]:
        """What closes the stream: the usage chunk, when it was asked for, and [DONE]."""
        return [sse(self.envelope.usage_chunk(used))] * self.with_usage + [DONE]

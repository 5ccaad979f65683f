"""OpenAI's request shapes (checked with pydantic, strictly typed) and its error shape.

Fields a local GLM-4 cannot honour are refused with a clear 400, never silently ignored; fields that
only describe the caller (user, metadata, store, ...) are accepted and ignored, as other local
servers do, so that unmodified apps work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's limit; vLLM's default)


class ApiError(Exception):
    """An error the client gets in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _integral(value: Any) -> Any:
    """100.0 as 100: some clients write every number as a float."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_integral)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Strict):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(_Strict):
    """The sampling fields chat and text completions share (None: the model's default)."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: Whole | None = Field(default=None, ge=0, le=2**31 - 1)  # llama.cpp's extensions, as its server takes them
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_tokens: Whole | None = Field(default=None, ge=1)
    seed: Whole | None = None
    stop: str | list[str] | None = None
    n: Whole | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | Whole | None = None
    best_of: Whole | None = None
    logit_bias: dict[str, float] | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings", "stop")
        return [s for s in stops if s]

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise bad_request("n: only 1 choice per request is supported; send several requests instead", "n")
        if self.best_of not in (None, 1):
            raise bad_request("best_of is not supported", "best_of")
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")


class ChatRequest(SamplingFields):
    messages: list[Any]  # shapes checked by chat/schema.py, the same code the terminal chat uses
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[Any] | None = None  # the legacy form of tools, still sent by older clients
    function_call: Literal["none", "auto"] | FunctionName | None = None
    response_format: ResponseFormat | None = None
    max_completion_tokens: Whole | None = Field(default=None, ge=1)
    parallel_tool_calls: bool | None = None  # GLM-4 makes one call per turn either way
    top_logprobs: Whole | None = None
    conversation_id: str | None = None  # glm4-local's own: whose tool state (kernel, pages) a request uses
    think: bool | None = None  # glm4-local's own (Ollama's `think`): false closes a reasoning model's thoughts

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_alternatives(self) -> int | None:
        """None: no log-probabilities asked for; else how many alternatives each token lists."""
        if self.logprobs is not None and not isinstance(self.logprobs, bool):
            raise bad_request("logprobs: true or false (top_logprobs says how many alternatives)", "logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs: from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
        if not self.logprobs:
            if self.top_logprobs:
                raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
            return None
        return self.top_logprobs or 0


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[Whole] | list[list[Whole]]  # text, or token ids (as OpenAI's API allows)
    echo: bool = False
    suffix: str | None = None

    def logprob_alternatives(self) -> int | None:
        """None: no log-probabilities asked for; else how many alternatives each token lists (the legacy
        `logprobs` is that number)."""
        if self.logprobs is None or self.logprobs is False:
            return None
        count = int(self.logprobs)
        if not 0 <= count <= MAX_TOP_LOGPROBS:
            raise bad_request(f"logprobs: from 0 to {MAX_TOP_LOGPROBS}", "logprobs")
        return count

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each its text or its token ids: one, or a list of them (run as a batch)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise bad_request("prompt: empty", "prompt")
        if all(isinstance(t, int) for t in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "json-or-python"})


def _field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's location as the request's field path (messages[2].role), without its type tags."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _TYPE_TAGS and not part[0].isupper():
            path += f".{part}" if path else part
    return path


def validation_error(e: ValidationError) -> ApiError:
    """The first problem pydantic found, as one line naming the field."""
    first = e.errors()[0]
    where = _field_path(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid value")
    return bad_request(f"{where}: {message}" if where else message, where or None)


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(_Strict):
    format: TextFormat | None = None


class ResponsesRequest(_Strict):
    """The Responses API's request (stateless: the whole conversation comes in `input`)."""

    model: str | None = None
    input: str | list[Any]
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    text: TextOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_output_tokens: Whole | None = Field(default=None, ge=1)
    stream: bool = False
    previous_response_id: str | None = None
    parallel_tool_calls: bool | None = None
    seed: Whole | None = None
    top_logprobs: Whole | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    include: list[str] | None = None
    metadata: dict[str, str] | None = None  # the caller's labels, given back with the response

    def logprob_alternatives(self) -> int | None:
        """None unless the output text's log-probabilities are included; else alternatives per token."""
        for i, name in enumerate(self.include or []):
            if name not in RESPONSE_INCLUDES:
                raise bad_request(f"include[{i}]: {name!r} is not something this server can include (it can: "
                                  f"{', '.join(RESPONSE_INCLUDES)})", "include")
        return (self.top_logprobs or 0) if OUTPUT_LOGPROBS in (self.include or []) else None


OUTPUT_LOGPROBS = "message.output_text.logprobs"
# what `include` may name: the output's log-probabilities; reasoning as encrypted content is asked by clients
# that keep no state (the Agents SDK), and there is none to give: the reasoning item carries the text itself
RESPONSE_INCLUDES = (OUTPUT_LOGPROBS, "reasoning.encrypted_content")

"""A request, turned into what to generate: prompt tokens, sampler, limits, stops, tools, grammar.

The prompt comes from the same path as the terminal chat's (chat/schema.py checks, the model's
template renders, markup alone becomes special tokens), so a conversation sent here gets exactly the
tokens `glm4-local chat` would feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glm4_local.chat.constraints import ConstraintError, answer_grammar, call_grammar, function_tools
from glm4_local.chat.runtime import ChatRuntime, PromptTooLong
from glm4_local.chat.schema import SchemaError, check_messages, check_tools
from glm4_local.chat.setup import ModelFacts
from glm4_local.chat.template import TemplateRenderError
from glm4_local.core.families.replies import ReplyFormat
from glm4_local.core.llama.door import tokenize
from glm4_local.core.llama.sampling import SamplerSettings, grammar_problem
from glm4_local.server.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    FunctionName,
    NamedToolChoice,
    SamplingFields,
    bad_request,
)


@dataclass(frozen=True)
class Plan:
    prompt: list[int]
    sampler: SamplerSettings
    max_new_tokens: int  # 0: as many as the context allows
    stop_strings: list[str]
    tools: list[dict[str, Any]] | None = None  # tools a reply may call (None: its text is an answer)
    prefix: str = ""  # reply text already in the prompt (the template's, e.g. GLM-Z1's "\n<think>"; a named
    # tool_choice's function name)
    forced_call: bool = False  # the grammar makes the reply a call
    raw: bool = False  # a text completion: no GLM-4 reply structure
    include_usage: bool = False
    stream: bool = False
    legacy_functions: bool = False  # asked with `functions`: a call comes back as `function_call`
    top_logprobs: int | None = None  # None: no log-probabilities; else each token's and this many alternatives
    echo: bool = False  # a text completion that begins with its prompt (and its tokens' log-probabilities)
    echo_text: str = ""  # the prompt as the choice's text begins with it


def _sampler(defaults: SamplerSettings, fields: SamplingFields, grammar: str | None) -> SamplerSettings:
    """The request's sampling fields over the model's defaults (a field left out keeps its default)."""
    return defaults.updated(temperature=fields.temperature, top_p=fields.top_p, top_k=fields.top_k,
                            min_p=fields.min_p, repeat_penalty=fields.repeat_penalty,
                            presence_penalty=fields.presence_penalty, frequency_penalty=fields.frequency_penalty,
                            seed=fields.seed, grammar=grammar)


def _too_long(tokens: int, n_ctx: int, param: str = "messages", counted_all: bool = True) -> ApiError:
    """What a prompt too long for a slot needs, said as what it needs: the prompt and one token of reply."""
    size = f"{tokens:,}" if counted_all else f"at least {tokens:,}"
    return bad_request(f"this request's prompt is {size} tokens, so with a reply of one token it needs a context "
                       f"of {'' if counted_all else 'at least '}{tokens + 1:,}; each slot holds {n_ctx:,} (the "
                       "server's --ctx)", param, "context_length_exceeded")


def _limit(prompt: list[int], asked: int | None, n_ctx: int, param: str = "messages") -> int:
    if len(prompt) >= n_ctx:
        raise _too_long(len(prompt), n_ctx, param)
    return min(asked, n_ctx - len(prompt)) if asked else 0


def _current_form(message: Any) -> Any:
    """A message in today's roles: developer as system; the legacy function call and result as a tool
    call and a tool message."""
    if not isinstance(message, dict):
        return message
    role = message.get("role")
    if role == "developer":
        return dict(message, role="system")
    if role == "function":
        return {"role": "tool", "content": message.get("content")}
    if role == "assistant" and isinstance(message.get("function_call"), dict) and not message.get("tool_calls"):
        call = {"id": "call_0", "type": "function", "function": message["function_call"]}
        return {k: v for k, v in message.items() if k != "function_call"} | {"tool_calls": [call]}
    return message


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    if not request.messages:
        raise bad_request("messages: at least one message is needed", "messages")
    return check_messages([_current_form(m) for m in request.messages], "messages")


ToolChoice = str | NamedToolChoice | None


def _tools_and_choice(request: ChatRequest) -> tuple[list[Any] | None, ToolChoice]:
    """`tools` and `tool_choice`, or the legacy `functions` and `function_call` in their form."""
    if request.functions is None and request.function_call is None:
        return request.tools, request.tool_choice
    if request.tools is not None or request.tool_choice is not None:
        raise bad_request("functions: send tools or the legacy functions, not both", "functions")
    tools = [{"type": "function", "function": f} for f in request.functions or []]
    call = request.function_call
    return tools, NamedToolChoice(type="function", function=call) if isinstance(call, FunctionName) else call


def _constraint(request: ChatRequest, choice: ToolChoice, tools: list[dict[str, Any]] | None,
                replies: ReplyFormat) -> tuple[str | None, str, bool]:
    """(grammar, prefilled reply text, whether the reply must be a call) for tool_choice/response_format."""
    if isinstance(choice, NamedToolChoice):
        names = {t["function"]["name"] for t in function_tools(tools or [])}
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not among the tools",
                              "tool_choice")
        name = choice.function.name
        return call_grammar(replies, tools or [], named=name), replies.call_prefix(name), True
    if choice == "required":
        if not tools:
            raise bad_request("tool_choice 'required' needs tools", "tool_choice")
        return call_grammar(replies, tools), "", True
    form = request.response_format
    if form is None or form.type == "text":
        return None, "", False
    if form.type == "json_object":
        return answer_grammar(replies, None), "", False
    if form.json_schema is None or form.json_schema.schema_ is None:
        raise bad_request("response_format: json_schema needs a \"schema\"", "response_format")
    return answer_grammar(replies, form.json_schema.schema_), "", False


def _trained_tools(tools: list[dict[str, Any]], trained: tuple[str, ...], field: str) -> None:
    """A built-in tool type the model's template does not know (GLM-4's `python` offered to GLM-4-0414) is
    refused by name, not rendered as a nameless function."""
    for i, tool in enumerate(tools):
        if tool["type"] not in trained:
            raise bad_request(f"{field}[{i}].type: {tool['type']!r} is not a tool this model was trained with "
                              f"(it knows {', '.join(trained)})", f"{field}[{i}].type")


def chat_plan(request: ChatRequest, runtime: ChatRuntime, facts: ModelFacts, defaults: SamplerSettings,
              default_limit: int = 0) -> Plan:
    """What to generate for a chat completion; ApiError 400 for anything malformed or impossible.
    `default_limit`: the most tokens a reply gets when the request sets none (0: the context's room)."""
    request.refuse_unsupported()
    try:
        messages = _messages(request)
        offered, choice = _tools_and_choice(request)
        field = "functions" if request.functions is not None else "tools"
        tools = check_tools(offered, field) if offered else None
        _trained_tools(tools or [], runtime.vocab.family.replies.tool_types, field)
        if choice == "none":
            tools = None  # not offered, so never called
        grammar, prefix, forced = _constraint(request, choice, tools, runtime.vocab.family.replies)
        if grammar is not None and (problem := grammar_problem(runtime.vocab.model.vocab, grammar)):
            where = "tools" if forced else "response_format"
            raise ConstraintError(f"{where}: {problem}", where)
        prompt = runtime.vocab.prompt(facts.template, messages, tools, limit=runtime.n_ctx - 1)
        head = facts.template.reply_head
    except PromptTooLong as e:
        raise _too_long(e.at_least, runtime.n_ctx, counted_all=False) from None
    except (SchemaError, ConstraintError) as e:
        raise bad_request(str(e), e.param) from None
    except TemplateRenderError as e:
        raise bad_request(str(e), "messages") from None
    if grammar is not None or request.think is False:  # a shape from the first token, or no thoughts asked for
        prefix = runtime.vocab.family.replies.skip_reasoning(head) + prefix
    if prefix:
        prompt += tokenize(runtime.vocab.model, prefix)
    options = request.stream_options
    return Plan(prompt, _sampler(defaults, request, grammar),
                _limit(prompt, request.token_limit() or default_limit, runtime.n_ctx), request.stop_strings(), tools,
                head + prefix,
                forced, include_usage=bool(options and options.include_usage), stream=request.stream,
                legacy_functions=request.functions is not None, top_logprobs=request.logprob_alternatives())


def _token_prompt(tokens: list[int], runtime: ChatRuntime) -> list[int]:
    """A prompt given as token ids: each one must be in the vocabulary (the context is _limit's)."""
    n_vocab = runtime.decoder.n_vocab
    if any(not 0 <= t < n_vocab for t in tokens):
        raise bad_request(f"prompt: token ids must be from 0 to {n_vocab - 1}", "prompt")
    return tokens


MAX_PROMPTS = 64  # prompts in one text completion request, run together


def completion_plans(request: CompletionRequest, runtime: ChatRuntime, defaults: SamplerSettings,
                     default_limit: int = 0) -> list[Plan]:
    """A plan for each of the request's prompts (a list of prompts is run as a batch, a choice each)."""
    request.refuse_unsupported()
    if request.suffix:
        raise bad_request("suffix: GLM-4 does not fill in the middle; send the text before it as the prompt",
                          "suffix")
    prompts = request.prompts()
    if len(prompts) > MAX_PROMPTS:
        raise bad_request(f"prompt: {len(prompts)} prompts; at most {MAX_PROMPTS} in one request", "prompt")
    return [completion_plan(request, given, runtime, defaults, default_limit) for given in prompts]


def completion_plan(request: CompletionRequest, given: str | list[int], runtime: ChatRuntime,
                    defaults: SamplerSettings, default_limit: int = 0) -> Plan:
    """A raw prompt, tokenized with its markup (the caller writes the whole prompt); `default_limit` as for
    chat_plan."""
    if not given:
        raise bad_request("prompt: empty", "prompt")
    if isinstance(given, list):
        prompt = _token_prompt(given, runtime)
        text = runtime.vocab.marked_text(prompt) if request.echo else ""
    else:
        text = given
        try:
            prompt = runtime.vocab.text_tokens(given, runtime.n_ctx - 1, special=True)
        except PromptTooLong as e:
            raise _too_long(e.at_least, runtime.n_ctx, "prompt", counted_all=False) from None
    options = request.stream_options
    limit = _limit(prompt, request.max_tokens or default_limit, runtime.n_ctx, "prompt")
    return Plan(prompt, _sampler(defaults, request, None), limit, request.stop_strings(), raw=True,
                include_usage=bool(options and options.include_usage), stream=request.stream,
                top_logprobs=request.logprob_alternatives(), echo=request.echo, echo_text=text)

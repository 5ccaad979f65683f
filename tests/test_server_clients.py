"""What ordinary clients send: legacy function calling, numbers written as floats, bare base URLs without
/v1, a forced call cut by max_tokens. Driven by the official openai client where it can send it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.serving import Server

pytestmark = pytest.mark.processes  # a real server

ASK = [{"role": "user", "content": "What is the weather?"}]
LOOKUP = {"name": "lookup", "description": "Look up the weather", "parameters": {"type": "object", "properties": {}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def tool_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(scripted_gguf("tool"), tmp_path_factory.mktemp("serve"), "--ctx", "1024")
    yield server
    server.stop()


def test_legacy_functions_are_offered_and_answered_as_function_call(tool_server: Server) -> None:
    client = tool_server.client()
    reply = client.chat.completions.create(model="m", messages=ASK, functions=[LOOKUP])
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert (choice.message.function_call.name, json.loads(choice.message.function_call.arguments)) == ("lookup", {})
    # the result goes back as a "function" message, as legacy clients send it
    messages: list[Any] = [*ASK, {"role": "assistant", "content": None,
                                  "function_call": {"name": "lookup", "arguments": "{}"}},
                           {"role": "function", "name": "lookup", "content": json.dumps({"sky": "clear"})}]
    second = client.chat.completions.create(model="m", messages=messages, functions=[LOOKUP])
    assert (second.choices[0].message.content, second.choices[0].finish_reason) == ("Sunny day", "stop")
    streamed = list(client.chat.completions.create(model="m", messages=ASK, functions=[LOOKUP], stream=True))
    calls = [c.choices[0].delta.function_call for c in streamed if c.choices and c.choices[0].delta.function_call]
    assert calls[0].name == "lookup" and "".join(c.arguments or "" for c in calls) == "{}"
    assert streamed[-1].choices[0].finish_reason == "function_call"
    none = client.chat.completions.create(model="m", messages=ASK, functions=[LOOKUP], function_call="none")
    assert none.choices[0].message.function_call is None  # not offered, so not called: the reply is text


def test_functions_and_tools_together_are_refused(tool_server: Server) -> None:
    status, error = tool_server.json("POST", "/v1/chat/completions",
                                     {"messages": ASK, "functions": [LOOKUP], "tools": [{"type": "function",
                                                                                          "function": LOOKUP}]})
    assert status == 400 and error["error"]["param"] == "functions"


def test_whole_numbers_written_as_floats_are_taken(random_server: Server) -> None:
    status, body = random_server.json("POST", "/v1/chat/completions",
                                      {"messages": ASK, "max_tokens": 4.0, "seed": 42.0, "top_k": 5.0})
    assert status == 200 and body["usage"]["completion_tokens"] <= 4
    status, error = random_server.json("POST", "/v1/chat/completions", {"messages": ASK, "max_tokens": 4.5})
    assert status == 400 and error["error"]["param"] == "max_tokens"


def test_routes_answer_without_the_v1_prefix(tool_server: Server) -> None:
    from openai import OpenAI

    bare = OpenAI(base_url=f"http://127.0.0.1:{tool_server.port}", api_key="x", max_retries=0)
    assert [m.id for m in bare.models.list()] == ["tiny-f32"]
    reply = bare.chat.completions.create(model="m", messages=ASK, tools=[{"type": "function", "function": LOOKUP}])
    assert reply.choices[0].finish_reason == "tool_calls"
    assert bare.completions.create(model="m", prompt="<|user|>\nhi<|assistant|>", max_tokens=2).choices


def test_a_forced_call_cut_by_max_tokens_comes_back_as_openai_returns_it(random_server: Server) -> None:
    """finish_reason "length", the call in tool_calls with its arguments as far as written; never GLM-4's
    raw `name\\n{...` text."""
    client = random_server.client()
    for stream in (False, True):
        reply = client.chat.completions.create(
            model="m", messages=ASK, tools=[WEATHER], max_tokens=3, temperature=1.0, seed=4, stream=stream,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        if stream:
            chunks = list(reply)
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            calls = [t for d in deltas for t in d.tool_calls or []]
            name, arguments = calls[0].function.name, "".join(t.function.arguments or "" for t in calls)
            content, reason = "".join(d.content or "" for d in deltas), chunks[-1].choices[0].finish_reason
        else:
            message = reply.choices[0].message
            name, arguments = message.tool_calls[0].function.name, message.tool_calls[0].function.arguments
            content, reason = message.content or "", reply.choices[0].finish_reason
        assert (reason, name, content) == ("length", "get_weather", "")
        assert arguments.startswith("{") and "get_weather" not in arguments


def test_responses_api_text_stream_tools_and_json(tool_server: Server, random_server: Server) -> None:
    client = tool_server.client()
    tools = [{"type": "function", **LOOKUP}]
    plain = client.responses.create(model="m", input="What is the weather?", instructions="Be brief.")
    assert (plain.status, plain.output_text, plain.output[0].type) == ("completed", "lookup\n{}", "message")
    called = client.responses.create(model="m", input=ASK, tools=tools)
    (call,) = [item for item in called.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("lookup", {}) and called.usage.input_tokens > 0
    follow_up = [*ASK, {"type": "function_call", "call_id": call.call_id, "name": "lookup", "arguments": "{}"},
                 {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}]
    answered = client.responses.create(model="m", input=follow_up, tools=tools)
    assert answered.output_text == "Sunny day" and answered.status == "completed"
    events = list(client.responses.create(model="m", input=follow_up, tools=tools, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Sunny day"
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    streamed_call = list(client.responses.create(model="m", input=ASK, tools=tools, stream=True))
    done = [e.item for e in streamed_call if e.type == "response.output_item.done"]
    assert [(i.type, i.name) for i in done] == [("function_call", "lookup")]

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    shaped = random_server.client().responses.create(
        model="m", input="Answer in JSON.", temperature=1.0, max_output_tokens=100,
        text={"format": {"type": "json_schema", "name": "status", "schema": schema}})
    assert isinstance(json.loads(shaped.output_text)["ok"], bool)
    cut = random_server.client().responses.create(model="m", input="Talk.", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_responses_api_refuses_what_it_cannot_do(tool_server: Server) -> None:
    for body, param in [({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
                        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
                        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
                        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role")]:
        status, error = tool_server.json("POST", "/v1/responses", body)
        assert status == 400 and error["error"]["param"] == param, error


def test_a_list_of_prompts_is_run_as_a_batch_a_choice_each(random_server: Server) -> None:
    """As lm-evaluation-harness sends them with --batch_size > 1: texts or token ids, whole or streamed."""
    client = random_server.client()
    prompts = ["The weather", "北京", "def f(x):"]
    alone = [client.completions.create(model="m", prompt=p, max_tokens=6, temperature=0).choices[0].text
             for p in prompts]
    together = client.completions.create(model="m", prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in together.choices] == [0, 1, 2] and [c.text for c in together.choices] == alone
    assert together.usage.completion_tokens == 18
    streamed = ["", "", ""]
    for chunk in client.completions.create(model="m", prompt=prompts, max_tokens=6, temperature=0, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == alone
    ids = client.completions.create(model="m", prompt=[[5, 6, 7], [8, 9]], max_tokens=2, temperature=0)
    assert len(ids.choices) == 2 and ids.usage.prompt_tokens == 5
    status, body = random_server.json("POST", "/v1/completions", {"prompt": ["x"] * 65, "max_tokens": 1})
    assert status == 400 and "at most 64" in body["error"]["message"]


def test_the_tokenizer_routes_give_the_models_own_tokens(random_server: Server) -> None:
    """llama.cpp's server's shapes and vLLM's: a text as /v1/completions reads it, messages as chat renders them."""
    text = "[gMASK]<sop><|user|>\nHello, 世界<|assistant|>"
    status, found = random_server.json("POST", "/tokenize", {"content": text})
    assert status == 200 and found["count"] == len(found["tokens"]) and found["max_model_len"] == 1024
    assert random_server.json("POST", "/detokenize", {"tokens": found["tokens"]})[1]["content"] == text
    completion = random_server.client().completions.create(model="m", prompt=text, max_tokens=1)
    assert completion.usage.prompt_tokens == found["count"]  # the prompt /v1/completions reads
    pieces = random_server.json("POST", "/v1/tokenize", {"prompt": text, "with_pieces": True})[1]["tokens"]
    assert [p["id"] for p in pieces] == found["tokens"] and "".join(p["piece"] for p in pieces) == text
    ask = [{"role": "user", "content": "Hello"}]
    chat = random_server.client().chat.completions.create(model="m", messages=ask, max_tokens=1)
    assert random_server.json("POST", "/tokenize", {"messages": ask})[1]["count"] == chat.usage.prompt_tokens
    for bad in ({"tokens": [-1]}, {"tokens": "x"}, {"tokens": [10**9]}):
        status, body = random_server.json("POST", "/detokenize", bad)
        assert status == 400 and "token ids from 0 to" in body["error"]["message"]
    assert random_server.json("POST", "/tokenize", {"text": "x"})[0] == 400

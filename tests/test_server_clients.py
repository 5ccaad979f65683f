"""What ordinary clients send: legacy function calling, numbers written as floats, bare base URLs without
/v1, a forced call cut by max_tokens. Driven by the official openai client where it can send it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import Server

ASK = [{"role": "user", "content": "What is the weather?"}]
LOOKUP = {"name": "lookup", "description": "Look up the weather", "parameters": {"type": "object", "properties": {}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def tool_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(scripted_gguf("tool"), tmp_path_factory.mktemp("serve"), "--ctx", "1024")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def random_server(make_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(make_gguf("f32"), tmp_path_factory.mktemp("serve"), "--ctx", "1024")
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

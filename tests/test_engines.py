"""`serve --engine URL`: our front (template, tokenizer, reply parsing, grammars, tools) in front of real
llama.cpp `llama-server` processes that decode; driven by the official openai client and plain HTTP."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers.cli import cli, one_line_error
from helpers.engines import LlamaServer, free_port
from helpers.marks import needs_sandbox
from helpers.serving import Server

pytestmark = pytest.mark.processes  # llama-servers and our server in front of them

CHINESE = [{"role": "user", "content": "你好！请用中文介绍一下北京，还有 emoji 🎉 和 naïve café。"}]
WAIT_SECONDS = 60.0


def front(model: Path, workdir: Path, *engines: LlamaServer, args: tuple[str, ...] = ()) -> Server:
    workdir.mkdir(exist_ok=True)
    flags = [flag for engine in engines for flag in ("--engine", engine.url)]
    return Server(model, workdir, *flags, *args)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Until `condition` holds (each check is a request to a process: there is no event to block on)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not in {WAIT_SECONDS:g} s: {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def random_model(make_gguf: Callable[..., Path]) -> Path:
    return make_gguf("f32")


@pytest.fixture(scope="module")
def engine(random_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(random_model, tmp_path_factory.mktemp("engine") / "llama-server.log", shared=True)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def fronted(random_model: Path, engine: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = front(random_model, tmp_path_factory.mktemp("front"), engine)
    yield server
    server.stop()


def reply(server: Server, messages: list[dict[str, Any]], stream: bool = False, **fields: Any) -> tuple[str, str, int]:
    """(content, finish reason, completion tokens) of a chat completion, whole or streamed."""
    client = server.client()
    if not stream:
        done = client.chat.completions.create(model="m", messages=messages, **fields)
        return done.choices[0].message.content or "", done.choices[0].finish_reason, done.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **fields))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    return content, finish, chunks[-1].usage.completion_tokens


def test_replies_through_an_engine_are_the_local_decoders(real_vocab_gguf: Path, tmp_path: Path) -> None:
    """GLM-4's own vocabulary on random weights: replies full of characters cut across tokens, whose ids
    llama-server's stream leaves out (the front recovers them from the text)."""
    engine = LlamaServer(real_vocab_gguf, tmp_path / "llama-server.log", slots=1)
    fronted = front(real_vocab_gguf, tmp_path / "front", engine)
    local = Server(real_vocab_gguf, tmp_path, "--ctx", "2048", "--parallel", "1")
    try:
        for fields in ({"temperature": 0, "max_tokens": 48},  # greedy
                       {"temperature": 0.9, "top_p": 0.9, "seed": 7, "frequency_penalty": 0.4, "max_tokens": 48}):
            for stream in (False, True):
                ours = reply(fronted, CHINESE, stream, **fields)
                assert ours == reply(local, CHINESE, stream, **fields), (fields, stream)
                assert ours[1] == "length" and ours[2] == 48
    finally:
        local.stop()
        fronted.stop()


def test_tool_calls_come_back_parsed_and_results_go_on(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    model = scripted_gguf("tool")
    engine = LlamaServer(model, tmp_path / "llama-server.log", slots=1)
    server = front(model, tmp_path / "front", engine, args=("--ctx", "4096", "--parallel", "2"))
    assert any("--ctx, --parallel not used with --engine" in line for line in server.output), server.output
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    asked = [{"role": "user", "content": "weather?"}]
    client = server.client()
    first = client.chat.completions.create(model="m", messages=asked, tools=tools)
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and (call.function.name, call.function.arguments) == (
        "lookup", "{}")
    history = [*asked, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="m", messages=history, tools=tools)
    assert second.choices[0].message.content == "Sunny day" and second.choices[0].finish_reason == "stop"
    assert second.usage.prompt_tokens_details.cached_tokens > 0  # the engine's slot kept the first turn
    server.stop()


SCHEMA = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "rain": {"type": "boolean"},
                                           "city": {"enum": ["Paris", "北京"]}},
          "required": ["unit", "rain", "city"], "additionalProperties": False}


def test_a_named_tool_choice_holds_the_engines_reply_to_the_schema(fronted: Server) -> None:
    tools = [{"type": "function", "function": {"name": "forecast", "parameters": SCHEMA}}]
    client = fronted.client()
    for seed in range(4):
        done = client.chat.completions.create(model="m", messages=CHINESE, tools=tools, temperature=1.0, seed=seed,
                                              tool_choice={"type": "function", "function": {"name": "forecast"}})
        [call] = done.choices[0].message.tool_calls
        assert call.function.name == "forecast"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)


def test_the_other_routes_answer_through_an_engine(fronted: Server) -> None:
    """Responses, text completions, Ollama's chat and the tokenizer: the same front, whatever decodes."""
    status, body = fronted.json("POST", "/v1/responses", {"input": "你好", "max_output_tokens": 4, "temperature": 0})
    assert status == 200 and body["usage"]["output_tokens"] == 4, body
    status, body = fronted.json("POST", "/v1/completions", {"prompt": ["Hello", "Bonjour"], "max_tokens": 3,
                                                            "temperature": 0})
    assert status == 200 and [c["finish_reason"] for c in body["choices"]] == ["length"] * 2, body
    status, body = fronted.json("POST", "/api/chat", {"model": "m", "messages": CHINESE, "stream": False,
                                                      "options": {"num_predict": 3, "temperature": 0}})
    assert status == 200 and body["done"] and body["eval_count"] == 3, body
    status, body = fronted.json("POST", "/tokenize", {"content": "你好"})
    assert status == 200 and body["tokens"], body


def test_log_probabilities_are_refused_through_engines_saying_why(fronted: Server) -> None:
    status, body = fronted.json("POST", "/v1/chat/completions", {"messages": CHINESE, "logprobs": True,
                                                                 "max_tokens": 2})
    assert status == 400 and "not available through --engine" in body["error"]["message"], body


def events(response: Any) -> Iterator[str]:
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: "):
            yield line[len("data: "):]


LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 30000, "temperature": 0}


@pytest.fixture
def long_model(tool_gguf: Callable[[str], Path]) -> Path:
    return tool_gguf("long")  # a reply that goes on until max_tokens


def streaming(model: Path, tmp_path: Path) -> tuple[LlamaServer, Server, http.client.HTTPConnection, Iterator[str]]:
    """An engine, our front, and a long reply streaming through them (its first events read)."""
    engine = LlamaServer(model, tmp_path / "llama-server.log", slots=1, slot_ctx=32768)
    server = front(model, tmp_path / "front", engine)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps({**LONG, "stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    lines = events(response)
    for _ in range(5):
        next(lines)
    return engine, server, connection, lines


def test_a_client_that_leaves_frees_the_engines_slot(long_model: Path, tmp_path: Path) -> None:
    engine, server, connection, _ = streaming(long_model, tmp_path)
    assert engine.busy_slots() == 1
    connection.close()
    wait_until(lambda: engine.busy_slots() == 0, "the engine's slot is free")
    _, slots = engine.get("/slots")
    assert slots[0]["next_token"][0]["n_decoded"] < 30000  # stopped there, not run to its end
    wait_until(lambda: server.metrics()["glm4_local_requests_cancelled_total"] == 1, "counted as cancelled")
    assert server.json("GET", "/health")[1]["slots_busy"] == 0
    server.stop()


def test_an_engine_that_dies_ends_the_stream_with_an_error_then_comes_back(long_model: Path, tmp_path: Path) -> None:
    engine, server, connection, lines = streaming(long_model, tmp_path)
    engine.kill()
    rest = list(lines)
    assert rest and "[DONE]" not in rest, "a cut reply must not end as a whole one"
    assert "error" in json.loads(rest[-1]) and "engine" in json.loads(rest[-1])["error"]["message"]
    assert not any(json.loads(e)["choices"][0]["finish_reason"] for e in rest[:-1] if json.loads(e).get("choices"))
    connection.close()
    # taken out: requests get a clear 503, /health says which engine and why
    status, body = server.json("POST", "/v1/chat/completions", {**LONG, "max_tokens": 4})
    assert status == 503 and "engine" in body["error"]["message"], body
    status, health = server.json("GET", "/health")
    assert status == 503 and health["engines"][0]["status"] == "out" and health["engines"][0]["problem"]
    engine.start()  # the same address again: tried with back-off, checked, taken back
    wait_until(lambda: server.json("GET", "/health")[0] == 200, "the engine taken back")
    status, body = server.json("POST", "/v1/chat/completions", {**LONG, "max_tokens": 4})
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert server.metrics()[f'glm4_local_engine_failures_total{{engine="{engine.url}"}}'] == 1
    server.stop()


def conversation(system: str, *turns: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in turns:
        messages += [{"role": "user", "content": turn}]
    return messages


def test_conversations_go_to_the_engine_holding_their_prefix(random_model: Path, tmp_path: Path) -> None:
    engines = [LlamaServer(random_model, tmp_path / f"llama-server-{i}.log", slots=1) for i in range(2)]
    server = front(random_model, tmp_path / "front", *engines)
    client = server.client()
    systems = {name: f"You are {name}. " + " ".join(f"{name} rule {i}: be kind." for i in range(30))
               for name in ("Ada", "Bo")}
    served: dict[str, list[int]] = {}

    def ask(name: str, *turns: str) -> int:
        before = [e["requests"] for e in server.json("GET", "/health")[1]["engines"]]
        done = client.chat.completions.create(model="m", messages=conversation(systems[name], *turns), max_tokens=4,
                                              temperature=0)
        after = [e["requests"] for e in server.json("GET", "/health")[1]["engines"]]
        served.setdefault(name, []).append([b - a for a, b in zip(before, after, strict=True)].index(1))
        return done.usage.prompt_tokens_details.cached_tokens

    ask("Ada", "hello")
    ask("Bo", "hello")  # no engine holds its prefix: the least used one
    assert ask("Ada", "hello", "and then?") > 150  # its system prompt came from the engine's cache
    assert ask("Bo", "hello", "and then?") > 150
    assert served["Ada"][0] != served["Bo"][0]
    assert served["Ada"] == [served["Ada"][0]] * 2 and served["Bo"] == [served["Bo"][0]] * 2
    server.stop()


def test_an_engine_running_another_model_is_refused_with_the_difference(tool_gguf: Callable[[str], Path],
                                                                       tmp_path: Path) -> None:
    engine = LlamaServer(tool_gguf("sleep"), tmp_path / "llama-server.log", slots=1)
    result = cli("serve", str(tool_gguf("python")), "--port", "0", "--engine", engine.url)
    stopped_with(result, f"the engine at {engine.url} runs another model: token ")


def stopped_with(result: Any, message: str) -> None:
    """serve announced itself, then stopped with one line saying why (as when a model cannot be loaded)."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"glm4-local: error: {message}"), result.stderr


def test_no_engine_answering_is_one_clear_line(random_model: Path) -> None:
    result = cli("serve", str(random_model), "--port", "0", "--engine", f"http://127.0.0.1:{free_port()}")
    stopped_with(result, "no engine answers: http://127.0.0.1:")
    one_line_error(cli("serve", str(random_model), "--engine", "gpu-box:8080"), "--engine gpu-box:8080")


@needs_sandbox
def test_the_pages_python_step_runs_through_an_engine(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    model = tool_gguf("python")
    engine = LlamaServer(model, tmp_path / "llama-server.log", slots=1)
    server = front(model, tmp_path / "front", engine, args=("--python",))
    status, body = server.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "go"}],
                                                                "tools": [{"type": "python"}], "conversation_id": "c"})
    assert status == 200, body
    message = body["choices"][0]["message"]
    assert message["content"] == "Sunny day"
    [step] = message["glm4_steps"]
    assert step["status"] == "done" and step["observations"][0]["content"] == "42\n"
    assert [f["name"] for f in step["files"]] == ["hi.txt"]
    server.stop()

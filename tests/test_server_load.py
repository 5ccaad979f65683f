"""The server under load: concurrent clients batched together, the bounded queue, disconnects,
grammar-constrained calls and JSON answers, and /health while the model loads."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers.serving import Server

pytestmark = pytest.mark.processes  # a real server

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin"]},
                                     "days": {"type": "integer"}},
    "required": ["city", "days"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def random_server(make_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(make_gguf("f32"), tmp_path_factory.mktemp("serve"), "--ctx", "2048", "--parallel", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def endless_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Server]:
    server = Server(scripted_gguf("endless"), tmp_path_factory.mktemp("serve"), "--ctx", "65536", "--max-queue", "1",
                    "--parallel", "1")
    yield server
    server.stop()


def ask(server: Server, i: int) -> tuple[str, str]:
    reply = server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"question {i}: " + "tell me more " * (i % 5)}],
        temperature=0, max_tokens=24)
    return reply.choices[0].message.content or "", reply.choices[0].finish_reason


def test_24_concurrent_clients_get_exactly_their_answers(random_server: Server) -> None:
    alone = [ask(random_server, i) for i in range(24)]
    before = random_server.metrics()
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda i: ask(random_server, i), range(24)))
    after = random_server.metrics()
    assert together == alone  # none lost, none mixed up, each the same as when asked alone
    generated = after["glm4_local_generated_tokens_total"] - before["glm4_local_generated_tokens_total"]
    calls = after["glm4_local_decode_calls_total"] - before["glm4_local_decode_calls_total"]
    assert generated >= 24 * 20 and calls < generated / 2  # decoded together, not one request after another
    assert after["glm4_local_slots_busy"] == 0 and after["glm4_local_queue_waiting"] == 0


def test_one_kv_buffer_for_all_slots_answers_the_same(random_server: Server, make_gguf: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    """`--kv-unified` (llama-server's flag): the slots share one KV buffer instead of a buffer each, said at
    start-up; concurrent clients get what the default layout gives them."""
    assert not any("one KV buffer" in line for line in random_server.output)
    shared = Server(make_gguf("f32"), tmp_path, "--ctx", "2048", "--parallel", "4", "--kv-unified")
    try:
        assert any(line.startswith("serving ") and "one KV buffer for all slots" in line for line in shared.output)
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda i: ask(shared, i), range(8)))
    finally:
        shared.stop()
    assert together == [ask(random_server, i) for i in range(8)]


def check_weather(arguments: dict[str, Any]) -> None:
    assert set(arguments) == {"city", "days"} and arguments["city"] in ("Paris", "Berlin")
    assert isinstance(arguments["days"], int)


@pytest.mark.parametrize("seed", [1, 2])
def test_required_and_named_tool_choice_give_schema_valid_calls(random_server: Server, seed: int) -> None:
    client = random_server.client()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    required = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, CLOCK],
                                              tool_choice="required", temperature=1.0, seed=seed, max_tokens=200)
    assert required.choices[0].finish_reason == "tool_calls"
    call = required.choices[0].message.tool_calls[0].function
    arguments = json.loads(call.arguments)
    if call.name == "get_weather":
        check_weather(arguments)
    else:
        assert call.name == "get_time" and arguments in ({"zone": "UTC"}, {"zone": "CET"})
    named = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, CLOCK], stream=True,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           temperature=1.0, seed=seed, max_tokens=200)
    calls = [t for chunk in named for t in chunk.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather"
    check_weather(json.loads("".join(t.function.arguments or "" for t in calls)))


def test_response_format_gives_json(random_server: Server) -> None:
    client = random_server.client()
    messages = [{"role": "user", "content": "Answer in JSON."}]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "level": {"type": "integer"}},
              "required": ["ok", "level"], "additionalProperties": False}
    reply = client.chat.completions.create(model="m", messages=messages, temperature=1.0, seed=3, max_tokens=200,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "status", "schema": schema}})
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"ok", "level"} and isinstance(answer["ok"], bool) and isinstance(answer["level"], int)
    loose = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=200,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


def open_stream(server: Server, max_tokens: int = 60000) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = {"messages": [{"role": "user", "content": "go on"}], "stream": True, "max_tokens": max_tokens}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    for _ in range(3):
        assert response.readline().startswith(b"data: ")
        response.readline()
    return connection


def wait_for(server: Server, name: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.metrics()[name] != value:
        assert time.monotonic() < deadline, f"{name} never became {value}: {server.metrics()}"
        time.sleep(0.05)


def test_a_client_that_goes_away_frees_its_slot(endless_server: Server) -> None:
    before = endless_server.metrics()
    connection = open_stream(endless_server)
    assert endless_server.metrics()["glm4_local_slots_busy"] == 1
    connection.close()
    wait_for(endless_server, "glm4_local_slots_busy", 0)
    after = endless_server.metrics()
    assert after["glm4_local_requests_cancelled_total"] == before["glm4_local_requests_cancelled_total"] + 1
    # what it generated before it was cancelled was generated: counted (Open WebUI's Stop, a closed tab)
    assert after["glm4_local_generated_tokens_total"] > before["glm4_local_generated_tokens_total"]
    reply = endless_server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                            max_tokens=3)
    assert reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stop", [None, ["never said"]])
def test_a_client_that_leaves_before_its_whole_reply_frees_its_slot(endless_server: Server,
                                                                   stop: list[str] | None) -> None:
    """A client waiting for a whole (not streamed) reply goes away: the server hears it (nothing is sent it
    meanwhile) and ends the job, with stop strings to look for or without."""
    before = endless_server.metrics()
    connection = http.client.HTTPConnection("127.0.0.1", endless_server.port, timeout=30)
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 60000, "stop": stop}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    wait_for(endless_server, "glm4_local_slots_busy", 1)
    connection.close()
    wait_for(endless_server, "glm4_local_slots_busy", 0)
    after = endless_server.metrics()
    assert after["glm4_local_requests_cancelled_total"] == before["glm4_local_requests_cancelled_total"] + 1


def test_a_full_queue_answers_503_with_retry_after(endless_server: Server) -> None:
    streaming = open_stream(endless_server)  # takes the only slot
    waiting: list[Any] = []
    thread = threading.Thread(target=lambda: waiting.append(endless_server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "next"}], max_tokens=4)))
    thread.start()
    wait_for(endless_server, "glm4_local_queue_waiting", 1)
    status, headers, body = endless_server.request("POST", "/v1/chat/completions",
                                                   {"messages": [{"role": "user", "content": "one more"}]})
    assert status == 503 and int(headers["retry-after"]) > 0
    assert json.loads(body)["error"]["code"] == "server_busy"
    streaming.close()  # the waiting request gets the slot
    thread.join(timeout=30)
    assert waiting and waiting[0].choices[0].finish_reason == "length"


def test_health_is_503_while_the_model_loads() -> None:
    import uvicorn

    from glm4_local.frontends.serve import exposure_warning, listen
    from glm4_local.server.app import ServerState, create_app

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(ServerState("m")), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        port = sock.getsockname()[1]

        def get(method: str, path: str, body: str | None = None) -> tuple[int, Any]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request(method, path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null") if path != "/metrics" else None

        assert get("GET", "/health") == (503, {"status": "loading"})
        status, error = get("POST", "/v1/chat/completions", "{}")
        assert status == 503 and error["error"]["code"] == "model_loading"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert exposure_warning("0.0.0.0", None) and not exposure_warning("0.0.0.0", "key")
    assert not exposure_warning("127.0.0.1", None)


def test_each_conversation_finds_the_slot_that_holds_it(random_server: Server) -> None:
    """Four conversations sharing the start of their system prompt take turns on four slots: none
    evicts another, so every later turn reuses all of its own previous prompt."""
    client = random_server.client()
    conversations = [[{"role": "system", "content": "You are a helpful assistant. " + f"Your number is {i}. " * 30}]
                     for i in range(4)]
    last_prompt = [0] * 4
    for turn in range(3):
        for i, messages in enumerate(conversations):
            messages.append({"role": "user", "content": f"Turn {turn}: tell me something."})
            reply = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=6)
            assert reply.usage.prompt_tokens_details.cached_tokens >= last_prompt[i] - 1, (turn, i)
            last_prompt[i] = reply.usage.prompt_tokens
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})


def test_a_seed_repeats_a_sampled_answer(random_server: Server) -> None:
    client = random_server.client()
    messages = [{"role": "user", "content": "Say something random."}]
    answers = [client.chat.completions.create(model="m", messages=messages, temperature=1.2, top_p=1.0, seed=seed,
                                              max_tokens=16, presence_penalty=0.5, frequency_penalty=0.5
                                              ).choices[0].message.content for seed in (7, 7, 8)]
    assert answers[0] == answers[1] and answers[0]

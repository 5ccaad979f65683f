"""`glm4-local serve` as apps use it: a real server process on 127.0.0.1, driven by the official openai client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers.serving import Server

pytestmark = pytest.mark.processes  # a real server

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up the weather",
                                           "parameters": {"type": "object", "properties": {}}}}]
ASK = [{"role": "user", "content": "What is the weather?"}]


@pytest.fixture(scope="module")
def answer_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(scripted_gguf("answer"), tmp_path_factory.mktemp("serve"), "--ctx", "1024")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tool_server(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(scripted_gguf("tool"), tmp_path_factory.mktemp("serve"), "--ctx", "1024", "--parallel", "2")
    yield server
    server.stop()


def test_plain_answer(answer_server: Server) -> None:
    reply = answer_server.client().chat.completions.create(model="anything", messages=ASK)
    choice = reply.choices[0]
    assert choice.message.content == "Sunny day" and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == "tiny-f32"  # the GGUF's name, whatever the client asked for
    assert reply.usage.completion_tokens == 3 and reply.usage.total_tokens == reply.usage.prompt_tokens + 3


def test_the_prompt_is_the_one_chat_feeds(answer_server: Server, scripted_gguf: Callable[[str], Path]) -> None:
    """Usage counts the exact prompt: the same tokens as `glm4-local render --tokens` gives."""
    from glm4_local.frontends.commands import render_conversation

    conversation = Path("conversation.json")
    conversation.write_text(json.dumps({"messages": ASK, "tools": TOOLS}))
    expected = render_conversation(conversation, None, str(scripted_gguf("answer")), tokens=True)
    reply = answer_server.client().chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    assert reply.usage.prompt_tokens == len(expected)


def test_streamed_answer_joins_to_the_same_text(answer_server: Server) -> None:
    stream = answer_server.client().chat.completions.create(model="m", messages=ASK, stream=True,
                                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sunny day"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_stop_strings_and_max_tokens(answer_server: Server) -> None:
    client = answer_server.client()
    cut = client.chat.completions.create(model="m", messages=ASK, stop=[" da"])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Sunny", "stop")
    streamed = client.chat.completions.create(model="m", messages=ASK, stop=" da", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "Sunny"
    short = client.chat.completions.create(model="m", messages=ASK, max_completion_tokens=2)
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == ("Sunny", "length")


def test_a_reply_without_the_leading_newline_ends_at_its_stop_string(scripted_gguf: Callable[[str], Path],
                                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """Its first line is text from its first word on: a stop string in it ends the job there, and usage counts
    the tokens up to it (not max_tokens), streamed or whole."""
    server = Server(scripted_gguf("unled"), tmp_path_factory.mktemp("serve"), "--ctx", "1024")
    try:
        client = server.client()
        cut = client.chat.completions.create(model="m", messages=ASK, stop=[" day day"], max_tokens=200)
        assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Sunny", "stop")
        assert cut.usage.completion_tokens == 3
        chunks = list(client.chat.completions.create(model="m", messages=ASK, stop=[" day day"], max_tokens=200,
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sunny"
        assert chunks[-1].usage.completion_tokens == 3
    finally:
        server.stop()


def test_text_completion_of_a_raw_prompt(answer_server: Server) -> None:
    reply = answer_server.client().completions.create(model="m", prompt="[gMASK]<sop><|user|>\nhi<|assistant|>")
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == ("\nSunny day", "stop")
    streamed = answer_server.client().completions.create(model="m", prompt="[gMASK]<sop><|user|>\nhi<|assistant|>",
                                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "\nSunny day"


def test_a_raw_prompt_of_token_ids(answer_server: Server, scripted_gguf: Callable[[str], Path]) -> None:
    """OpenAI's completions take token ids too: the same reply as the text they spell."""
    from glm4_local.chat.runtime import Vocabulary
    from glm4_local.chat.setup import ModelFacts
    from glm4_local.core.llama import door

    text = "[gMASK]<sop><|user|>\nhi<|assistant|>"
    path = scripted_gguf("answer")
    tokens = Vocabulary(door.load(path, vocab_only=True), ModelFacts.read(path).family).text_tokens(text, special=True)
    client = answer_server.client()
    by_text = client.completions.create(model="m", prompt=text, max_tokens=4)
    for prompt in (tokens, [tokens]):
        reply = client.completions.create(model="m", prompt=prompt, max_tokens=4)
        assert reply.choices[0].text == by_text.choices[0].text and reply.usage == by_text.usage
    for bad in ([-1, 5], [10**9]):
        status, body = answer_server.json("POST", "/v1/completions", {"model": "m", "prompt": bad})
        assert status == 400 and body["error"]["param"] == "prompt"


def test_tool_call(tool_server: Server) -> None:
    reply = tool_server.client().chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == ("function", "lookup", {})
    assert call.id.startswith("call_")


def test_streamed_tool_call(tool_server: Server) -> None:
    chunks = list(tool_server.client().chat.completions.create(model="m", messages=ASK, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(d.content or "" for d in deltas) == ""
    calls = [t for d in deltas for t in d.tool_calls or []]
    assert calls[0].id and calls[0].function.name == "lookup"
    assert "".join(t.function.arguments or "" for t in calls) == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(tool_server: Server) -> None:
    client = tool_server.client()
    first = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS).choices[0].message
    call = first.tool_calls[0]
    messages: list[Any] = [*ASK, first.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear"})}]
    second = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert (second.choices[0].message.content, second.choices[0].finish_reason) == ("Sunny day", "stop")
    assert second.usage.prompt_tokens_details.cached_tokens > 0  # the slot kept the first request's prompt


def test_without_tools_a_call_looking_reply_is_text(tool_server: Server) -> None:
    reply = tool_server.client().chat.completions.create(model="m", messages=ASK)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("lookup\n{}", "stop")
    none = tool_server.client().chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="none")
    assert not none.choices[0].message.tool_calls


def test_malformed_call_comes_back_as_text(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(scripted_gguf("bad_json"), tmp_path, "--ctx", "1024")
    try:
        reply = server.client().chat.completions.create(model="m", messages=ASK, tools=TOOLS)
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("lookup\n{", "stop")
        assert not reply.choices[0].message.tool_calls
    finally:
        server.stop()


def test_api_key(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(scripted_gguf("answer"), tmp_path, "--ctx", "1024", "--api-key", "s3cret")
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            server.client("wrong").chat.completions.create(model="m", messages=ASK)
        assert refused.value.body["code"] == "invalid_api_key"
        for path in ("/v1/models", "/metrics"):
            assert server.request("GET", path)[0] == 401
        assert server.json("GET", "/health") == (200, {"status": "ok", "slots": 3, "slots_busy": 0, "queued": 0,
                                                   "reading_prompts": []})
        reply = server.client("s3cret").chat.completions.create(model="m", messages=ASK)
        assert reply.choices[0].message.content == "Sunny day"
        assert [m.id for m in server.client("s3cret").models.list()] == ["tiny-f32"]
    finally:
        server.stop()


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [ASK[0], {"role": "user", "content": 5}]}, "messages[1].content"),
    ({"messages": ASK, "temperature": "hot"}, "temperature"),
    ({"messages": ASK, "temperature": -1}, "temperature"),
    ({"messages": ASK, "max_tokens": 0}, "max_tokens"),
    ({"messages": ASK, "max_tokens": True}, "max_tokens"),
    ({"messages": ASK, "n": 2}, "n"),
    ({"messages": ASK, "logprobs": 3}, "logprobs"),
    ({"messages": ASK, "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": ASK, "tool_choice": "maybe"}, "tool_choice"),
    ({"messages": ASK, "stop": [1]}, "stop"),
    ({"messages": ASK, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),
    ({"messages": ASK, "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                                  "schema": {"type": "wat"}}}},
     "response_format.json_schema.schema"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
])
def test_malformed_requests_get_a_400_and_the_server_goes_on(answer_server: Server, body: Any,
                                                                param: str | None) -> None:
    status, error = answer_server.json("POST", "/v1/chat/completions", body)
    assert status == 400, error
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["message"]
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["param"] == param
    reply = answer_server.client().chat.completions.create(model="m", messages=ASK)
    assert reply.choices[0].message.content == "Sunny day"


def test_too_long_for_the_context_says_so(answer_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        answer_server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "a " * 3000}])
    assert refused.value.code == "context_length_exceeded"
    # what it needs (the prompt and one token of reply), never "at least 1,024 ... holds 1,024", which reads as a fit
    message = refused.value.body["message"]
    assert "with a reply of one token it needs a context of at least " in message
    assert message.endswith("each slot holds 1,024 (the server's --ctx)")


def test_oversized_body_and_unknown_routes(answer_server: Server) -> None:
    status, _, data = answer_server.request("POST", "/v1/chat/completions", b" " * (9 * 1024 * 1024))
    assert status == 413 and json.loads(data)["error"]["message"]
    status, error = answer_server.json("GET", "/v1/nothing-here")
    assert status == 404 and error["error"]["type"] == "not_found_error"
    status, error = answer_server.json("GET", "/v1/chat/completions")
    assert status == 405 and error["error"]["message"]


def test_cors_is_off_unless_asked(answer_server: Server, scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST"}
    _, headers, _ = answer_server.request("OPTIONS", "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in headers
    server = Server(scripted_gguf("answer"), tmp_path, "--ctx", "1024", "--cors-origin", "http://app.test")
    try:
        status, headers, _ = server.request("OPTIONS", "/v1/chat/completions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.test"
    finally:
        server.stop()


def test_sigterm_stops_it_cleanly(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(scripted_gguf("answer"), tmp_path, "--ctx", "1024")
    assert server.client().chat.completions.create(model="m", messages=ASK).choices[0].message.content
    code, output = server.stop()
    assert code == 0 and "Traceback" not in output


def test_a_missing_model_or_busy_port_is_one_line(tmp_path: Path, answer_server: Server,
                                                  scripted_gguf: Callable[[str], Path]) -> None:
    import subprocess
    import sys

    busy = ["--port", str(answer_server.port)]
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 64)
    for args in (["nowhere.gguf"], [str(corrupt)], [str(scripted_gguf("answer")), *busy]):
        result = subprocess.run([sys.executable, "-m", "glm4_local", "serve", *args], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.startswith("glm4-local: error:"), result.stderr


def test_a_request_without_max_tokens_gets_the_servers_cap(scripted_gguf: Callable[[str], Path],
                                                          tmp_path: Path) -> None:
    """Apps send background requests (titles, tags) with no max_tokens: a model that does not stop is cut at
    --default-max-tokens, not at the end of the context."""
    server = Server(scripted_gguf("endless"), tmp_path, "--ctx", "256", "--default-max-tokens", "7")
    try:
        client = server.client()
        capped = client.chat.completions.create(model="m", messages=ASK)
        assert (capped.choices[0].finish_reason, capped.usage.completion_tokens) == ("length", 7)
        asked = client.chat.completions.create(model="m", messages=ASK, max_tokens=12)
        assert asked.usage.completion_tokens == 12
        text = client.completions.create(model="m", prompt="go")
        assert text.usage.completion_tokens == 7
        status, body = server.json("POST", "/api/chat", {"messages": ASK, "stream": False,
                                                          "options": {"num_predict": -1}})  # Ollama: until full
        assert status == 200 and body["eval_count"] + body["prompt_eval_count"] == 256
    finally:
        server.stop()


def test_accepted_connections_send_small_replies_at_once() -> None:
    """Nagle's algorithm is off on every connection the server accepts (asyncio turns it off only on a
    socket made as TCP): with it on, each reply after a keep-alive connection's first waited for the
    client's delayed ACK, 40 ms a request (lm-eval's tokenizer calls took 85 ms each)."""
    import asyncio
    import socket

    from glm4_local.frontends.serve import listen

    listening = listen("127.0.0.1", 0)
    delays: list[int] = []

    async def run() -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            delays.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        while not delays:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(run())
    assert delays == [1]


def test_a_fresh_servers_first_request_imports_nothing(scripted_gguf: Callable[[str], Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What a first chat request would import or compile (anyio's worker-thread backend, the chat template) is
    done while the model loads, not in that request's time to first token."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the server writes a line for every module it imports
    server = Server(scripted_gguf("answer"), tmp_path, "--ctx", "1024")
    try:
        assert server.json("GET", "/health")[0] == 200  # uvicorn's own imports are over once it answers
        reply = server.client().chat.completions.create(model="m", messages=ASK)
    finally:
        _, output = server.stop()
    assert reply.choices[0].message.content == "Sunny day"
    lines = output.splitlines()
    assert any(line.startswith("import time:") for line in lines)  # the server does say what it imports
    healthy = next(i for i, line in enumerate(lines) if "GET /health 200" in line)
    answered = next(i for i, line in enumerate(lines) if "POST /v1/chat/completions 200" in line)
    assert healthy < answered
    assert not [line for line in lines[healthy:answered] if line.startswith("import time:")]

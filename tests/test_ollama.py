"""Ollama's API, driven by Ollama's own clients (the `ollama` Python package and the `ollama` npm package)
against a real `glm4-local serve`: models listed, chats and generations streamed and not, a tool call and its
result, structured output, a reasoning model's thinking, and errors in Ollama's shape."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import toolscripts
from helpers.glm4_0414 import Z1
from helpers.serving import Server

ollama = pytest.importorskip("ollama", reason="needs the ollama client (the [dev] extra)")
pytestmark = pytest.mark.processes  # a real server
CLIENTS = Path(__file__).parent / "js" / "clients"
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def tool_server(make_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(make_gguf("f32", dtype="f32", **toolscripts.gguf_fields("mcp")), tmp_path_factory.mktemp("o"))
    yield server
    server.stop()


def client(server: Server) -> object:
    return ollama.Client(host=f"http://127.0.0.1:{server.port}")


def test_the_model_is_listed_shown_and_running(tool_server: Server) -> None:
    ours = client(tool_server)
    [model] = ours.list().models
    assert model.model == "tiny-f32" and model.size > 0 and model.details.format == "gguf"
    assert model.details.family == "chatglm" and model.details.quantization_level == "ALL_F32"
    [running] = ours.ps().models
    assert running.model == "tiny-f32" and running.context_length == 4096
    shown = ours.show("tiny-f32")
    assert shown.capabilities == ["completion", "tools"] and "[gMASK]" in shown.template
    assert shown.modelinfo["general.architecture"] == "chatglm"
    assert tool_server.json("GET", "/api/version")[1] == {"version": "0.12.0"}


def test_a_tool_call_and_the_answer_after_its_result(tool_server: Server) -> None:
    ours = client(tool_server)
    ask = [{"role": "user", "content": "add"}]
    reply = ours.chat(model="tiny-f32", messages=ask, tools=TOOLS)
    [call] = reply.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("add", json.loads(toolscripts.ADD))  # an object
    assert reply.done and reply.done_reason == "stop" and reply.eval_count == 3 and reply.prompt_eval_count > 0
    follow = [*ask, reply.message, {"role": "tool", "content": "42", "tool_name": "add"}]
    parts = list(ours.chat(model="tiny-f32", messages=follow, tools=TOOLS, stream=True))
    assert "".join(p.message.content for p in parts) == "Sunny day" and parts[-1].done
    assert [p.done for p in parts].count(True) == 1 and parts[-1].total_duration > 0


def test_structured_output_and_generate(random_server: Server) -> None:
    ours = client(random_server)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "level": {"type": "integer"}},
              "required": ["ok", "level"], "additionalProperties": False}
    reply = ours.chat(model="m", messages=[{"role": "user", "content": "JSON"}], format=schema,
                      options={"temperature": 1.0, "seed": 3, "num_predict": 200})
    answer = json.loads(reply.message.content)
    assert set(answer) == {"ok", "level"} and isinstance(answer["level"], int)
    assert isinstance(json.loads(ours.chat(model="m", messages=[{"role": "user", "content": "JSON"}], format="json",
                                           options={"num_predict": 200}).message.content), dict)
    cut = ours.generate(model="m", prompt="Once", options={"num_predict": 4, "temperature": 0})
    assert cut.done_reason == "length" and cut.eval_count == 4
    streamed = list(ours.generate(model="m", prompt="Once", stream=True, options={"num_predict": 4, "temperature": 0}))
    assert "".join(p.response for p in streamed) == cut.response
    raw = ours.generate(model="m", prompt="[gMASK]<sop><|user|>\nOnce<|assistant|>", raw=True,
                        options={"num_predict": 4, "temperature": 0})
    assert raw.eval_count == 4


def test_errors_name_what_they_refuse(tool_server: Server) -> None:
    ours = client(tool_server)
    for call, expected in [
        (lambda: ours.chat(model="m", messages=[{"role": "user", "content": "x"}], options={"mirostat_x": 1}),
         "options.mirostat_x: not an option this server knows"),
        (lambda: ours.embed(model="m", input="x"), "makes no embeddings; start the server with --embedding-model"),
        (lambda: ours.generate(model="m", prompt="x", suffix="y"), "suffix: fill-in-the-middle"),
        (lambda: ours.pull("glm-5"), "this server serves 'tiny-f32'"),
    ]:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 400 and expected in caught.value.error
    assert ours.pull("tiny-f32").status == "success"


def test_a_reasoning_model_thinks_apart(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    server = Server(make_gguf("f32", dtype="f32", **Z1), tmp_path)
    try:
        ours = client(server)
        ask = [{"role": "user", "content": "hi"}]
        reply = ours.chat(model="m", messages=ask)
        assert (reply.message.thinking, reply.message.content) == ("Hmm", "Sunny day")
        parts = list(ours.chat(model="m", messages=ask, stream=True))
        assert "".join(p.message.thinking or "" for p in parts) == "Hmm"
        assert "".join(p.message.content for p in parts) == "Sunny day"
        assert "thinking" in ours.show("m").capabilities
        assert ours.chat(model="m", messages=ask, think=False).message.thinking is None  # thoughts closed first
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("node") is None or not (CLIENTS / "node_modules" / "ollama").is_dir(),
                    reason="needs node and the ollama npm package (npm ci --prefix tests/js/clients; .ci/run does)")
@pytest.mark.parametrize("mode", ["tools", "structured"])
def test_the_ollama_npm_package(tool_server: Server, random_server: Server, mode: str) -> None:
    server = tool_server if mode == "tools" else random_server
    run = subprocess.run(["node", str(CLIENTS / "ollama_client.mjs"), f"http://127.0.0.1:{server.port}", mode],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout)
    if mode == "tools":
        assert seen["call"] == [{"function": {"name": "add", "arguments": json.loads(toolscripts.ADD)}}]
        assert (seen["answer"], seen["done_reason"], seen["tags"], seen["version"]) == (
            "Sunny day", "stop", ["tiny-f32"], "0.12.0")
    else:
        assert isinstance(seen["structured"]["ok"], bool) and seen["eval_count"] == 5 and seen["generated"]

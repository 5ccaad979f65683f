"""Tools run by `serve` itself (--python, --browser): scripted GGUFs that call them, a real server, the
official openai client; the steps in glm4-local's extension, per-conversation state, the limits."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import Server
from test_all_tools import needs_sandbox
from test_browser import write_folder
from toolscripts import CITED, CODE

from glm4_local.core.errors import Glm4LocalError
from glm4_local.frontends.serve import ServeOptions
from glm4_local.frontends.tool_setup import ToolOptions
from glm4_local.server.tool_sessions import ToolSessions

PYTHON = [{"type": "python"}]
BROWSER = [{"type": "simple_browser"}]
ASK = [{"role": "user", "content": "go"}]


@pytest.fixture(scope="module")
def python_server(tool_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if needs_sandbox.args[0]:
        pytest.skip(needs_sandbox.kwargs["reason"])
    server = Server(tool_gguf("python"), tmp_path_factory.mktemp("python-server"), "--python")
    yield server
    server.stop()


def steps_of(stream: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    content, steps, last = "", [], {}
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        extra = delta.model_extra or {}
        if "glm4_step" in extra:
            steps.append(extra["glm4_step"])
        if "glm4_citations" in extra:
            last = extra["glm4_citations"]
    return content, steps, last


def test_python_runs_in_the_server_and_streams_its_steps(python_server: Server) -> None:
    client = python_server.client()
    stream = client.chat.completions.create(model="m", messages=ASK, tools=PYTHON, stream=True,
                                            extra_body={"conversation_id": "conv-a"})
    content, steps, _ = steps_of(stream)
    assert content == "Sunny day"
    running, done = steps
    assert running["status"] == "running" and running["input"] == CODE and running["observations"] == []
    assert done["status"] == "done" and done["observations"][0]["content"] == "42\n"
    assert [f["name"] for f in done["files"]] == ["hi.txt"]
    call, result = done["messages"]
    assert call["tool_calls"][0]["function"] == {"name": "python", "arguments": CODE}
    assert result == {"role": "tool", "content": "42\n", "tool_call_id": call["tool_calls"][0]["id"]}
    status, headers, body = python_server.request("GET", done["files"][0]["url"])
    assert (status, body) == (200, b"hi") and headers["content-type"] == "application/octet-stream"
    assert "attachment" in headers["content-disposition"] and "sandbox" in headers["content-security-policy"]


def test_the_whole_response_carries_the_steps_and_the_usage_of_every_call(python_server: Server) -> None:
    status, body = python_server.json("POST", "/v1/chat/completions",
                                      {"messages": ASK, "tools": PYTHON, "conversation_id": "conv-b"})
    assert status == 200, body
    message = body["choices"][0]["message"]
    assert message["content"] == "Sunny day" and body["choices"][0]["finish_reason"] == "stop"
    [step] = message["glm4_steps"]
    assert step["status"] == "done" and step["observations"][0]["content"] == "42\n"
    assert body["usage"]["completion_tokens"] == 3 + 2  # the call (python, \n, code) and the answer (Sunny, day)
    # the steps' messages are the conversation's: sent back, they are a valid history
    follow = [*ASK, *step["messages"], {"role": "assistant", "content": "Sunny day"}, {"role": "user", "content": "?"}]
    status, again = python_server.json("POST", "/v1/chat/completions", {"messages": follow, "tools": PYTHON})
    assert status == 200 and again["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"] // 2


def test_conversations_never_see_each_others_files(python_server: Server) -> None:
    python_server.json("POST", "/v1/chat/completions", {"messages": ASK, "tools": PYTHON, "conversation_id": "own"})
    assert python_server.request("GET", "/v1/glm4/files/own/hi.txt")[0] == 200
    for other in ("other", "..", "own/../other"):
        assert python_server.request("GET", f"/v1/glm4/files/{other}/hi.txt")[0] == 404
    assert python_server.request("GET", "/v1/glm4/files/own/..%2Fown%2Fhi.txt")[0] == 404
    # a request without an id has a kernel of its own, ended with it: nothing of it is served after
    status, body = python_server.json("POST", "/v1/chat/completions", {"messages": ASK, "tools": PYTHON})
    assert status == 200 and body["choices"][0]["message"]["glm4_steps"][0]["files"][0]["url"] == ""


def test_a_web_page_of_another_origin_cannot_run_code(python_server: Server) -> None:
    status, body = python_server.json("POST", "/v1/chat/completions", {"messages": ASK, "tools": PYTHON},
                                      headers={"Origin": "http://evil.example"})
    assert status == 403
    own = f"http://127.0.0.1:{python_server.port}"
    status, body = python_server.json("POST", "/v1/chat/completions", {"messages": ASK, "tools": PYTHON},
                                      headers={"Origin": own})
    assert status == 200 and body["choices"][0]["message"]["content"] == "Sunny day"


def test_the_tools_the_server_runs_are_listed(python_server: Server) -> None:
    status, body = python_server.json("GET", "/v1/glm4/tools")
    assert status == 200 and body["tools"] == PYTHON and body["conversation_idle_seconds"] == 900


def test_without_the_flags_calls_go_back_to_the_client(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(tool_gguf("python"), tmp_path)
    try:
        reply = server.client().chat.completions.create(model="m", messages=ASK, tools=PYTHON)
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.tool_calls[0].function.name == "python"
        assert server.json("GET", "/v1/glm4/tools")[1]["tools"] == []
    finally:
        server.stop()


def test_the_browser_runs_in_the_server_with_citations(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("trafilatura")
    folder = write_folder(tmp_path / "recipes")
    server = Server(tool_gguf("browser"), tmp_path, "--browser", f"folder:{folder}")
    try:
        stream = server.client().chat.completions.create(model="m", messages=ASK, tools=BROWSER, stream=True,
                                                         extra_body={"conversation_id": "web"})
        content, steps, citations = steps_of(stream)
        assert content == f"Sunny{CITED} day"
        assert [o["metadata"] for o in steps[-1]["observations"]] == ["browser_result", "quote_result [7†source]"]
        assert citations == {"7": {"title": "Cooking", "url": "folder://recipes/cooking.html"}}
    finally:
        server.stop()


def test_documents_are_read_and_measured_in_tokens(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(tool_gguf("python"), tmp_path)
    try:
        text = "# 笔记\n\nGLM-4 reads documents.\n"
        status, body = server.json("POST", "/v1/glm4/documents",
                                   {"name": "notes.md", "data": base64.b64encode(text.encode()).decode()})
        assert status == 200, body
        assert body["text"] == text and body["name"] == "notes.md" and body["tokens"] > 10
        status, body = server.json("POST", "/v1/glm4/documents", {"name": "x.pdf", "data": "bm90IGEgcGRm"})
        assert status == 400 and "x.pdf" in body["error"]["message"]
        assert server.json("POST", "/v1/glm4/documents", {"name": "x.md", "data": "%%%"})[0] == 400
    finally:
        server.stop()


def test_the_page_is_served_with_its_policy(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(tool_gguf("python"), tmp_path, "--api-key", "k")
    try:
        status, headers, body = server.request("GET", "/")
        assert status == 200 and b"<script" in body and "script-src 'self'" in headers["content-security-policy"]
        assert "access-control-allow-origin" not in headers
        status, headers, _ = server.request("GET", "/page/app.js")
        assert status == 200 and "javascript" in headers["content-type"]
        assert server.request("GET", "/page/../serve.py")[0] == 404
        assert server.request("GET", "/v1/glm4/tools")[0] == 401  # everything but the page's files needs the key
    finally:
        server.stop()


def test_tools_on_another_host_need_an_api_key() -> None:
    with pytest.raises(Glm4LocalError, match="need --api-key"):
        ServeOptions(host="0.0.0.0", tools=ToolOptions(python=True))
    ServeOptions(host="0.0.0.0", api_key="k", tools=ToolOptions(python=True))
    ServeOptions(host="0.0.0.0")  # no tools: only the warning of an open model


class FakeTool:
    def __init__(self, folder: Path, log: list[str]) -> None:
        self.folder, self.log = folder, log

    def run(self, name: str, payload: str) -> list[Any]:
        return []

    def interrupt(self) -> None: ...

    def close(self) -> None:
        self.log.append(self.folder.name)


async def _use(sessions: ToolSessions, conversation: str | None) -> Path:
    async with sessions.session(conversation) as session:
        (session.data_dir / "x").write_text("x")
        return session.data_dir


def test_idle_conversations_end_and_the_oldest_beyond_the_limit(tmp_path: Path) -> None:
    import asyncio

    closed: list[str] = []
    sessions = ToolSessions(lambda folder: {"python": FakeTool(folder, closed)}, ("python",), idle_seconds=100,
                            max_conversations=2, root=tmp_path / "root")
    first = asyncio.run(_use(sessions, "a"))
    asyncio.run(_use(sessions, "b"))
    assert asyncio.run(_use(sessions, "a")) == first and closed == []  # the same conversation again
    one_off = asyncio.run(_use(sessions, None))
    assert closed == [one_off.name] and not one_off.exists()  # a request without an id: ended with it
    asyncio.run(_use(sessions, "c"))  # a third: the least recently used (b) ends
    assert closed[-1] == "b" and sorted(sessions.sessions) == ["a", "c"]
    import time

    assert sorted(sessions.expire(now=time.monotonic() + 101)) == ["a", "c"] and not first.exists()
    sessions.close()
    assert not (tmp_path / "root").exists()
    assert json.dumps(sessions.offered()) == '[{"type": "python"}]'


def test_an_idle_conversation_ends_though_no_request_comes(tmp_path: Path) -> None:
    import asyncio
    import threading

    ended = threading.Event()

    class Tool(FakeTool):
        def close(self) -> None:
            super().close()
            ended.set()

    closed: list[str] = []
    sessions = ToolSessions(lambda folder: {"python": Tool(folder, closed)}, ("python",), idle_seconds=0.2,
                            root=tmp_path / "root")
    try:
        folder = asyncio.run(_use(sessions, "quiet"))
        assert ended.wait(30), "the idle conversation was never ended"
        assert closed == ["quiet"] and sessions.sessions == {} and not folder.exists()
    finally:
        sessions.close()
    assert sessions.reaper is not None and not sessions.reaper.is_alive()

"""Tools run by `serve` itself (--python, --browser): scripted GGUFs that call them, a real server, the
official openai client; the steps in glm4-local's extension, per-conversation state, the limits."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.marks import needs_sandbox
from helpers.serving import Server
from helpers.toolscripts import CITED, CODE
from helpers.webfixtures import write_folder

from glm4_local.chat.tool_loop import TOO_MANY_CALLS
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.frontends.serve import ServeOptions
from glm4_local.server.tool_sessions import ToolSessions
from glm4_local.tools.options import ToolOptions

pytestmark = pytest.mark.processes  # a real server and its kernels

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


@needs_sandbox
def test_a_chain_of_calls_stops_where_the_chat_stops(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(tool_gguf("loop"), tmp_path, "--python")
    try:
        status, body = server.json("POST", "/v1/chat/completions", {"messages": ASK, "tools": PYTHON})
        assert status == 200, body
        choice = body["choices"][0]
        message = choice["message"]
        # 10 calls run, the 11th answered with the error the chat gives it, never handed to the client
        assert choice["finish_reason"] == "stop" and "tool_calls" not in message and message["content"] == ""
        assert message["glm4_stopped"] == "more than 10 tool calls in a row"
        assert len(message["glm4_steps"]) == 11
        assert message["glm4_steps"][-1]["messages"][-1]["content"] == TOO_MANY_CALLS
        stream = server.client().chat.completions.create(model="m", messages=ASK, tools=PYTHON, stream=True)
        chunks = [c for c in stream if c.choices]
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].choices[0].delta.model_extra["glm4_stopped"] == "more than 10 tool calls in a row"
        assert not any(c.choices[0].delta.tool_calls for c in chunks)
    finally:
        server.stop()


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
        # a document goes with its message as data; the model reads it in its family's form
        as_data = [{"role": "user", "content": "What?", "documents": [{"name": "notes.md", "text": text}]}]
        written = [{"role": "user", "content": GLM4_9B.replies.with_documents(as_data[0]["documents"], "What?")}]
        used = [server.json("POST", "/v1/chat/completions", {"messages": m, "max_tokens": 1})[1]["usage"]
                for m in (as_data, written)]
        assert used[0]["prompt_tokens"] == used[1]["prompt_tokens"] > 10
        status, body = server.json("POST", "/v1/chat/completions",
                                   {"messages": [{"role": "assistant", "content": "x", "documents": []}]})
        assert status == 400 and "only a user message carries documents" in body["error"]["message"]
        assert server.json("GET", "/v1/glm4/tools")[1]["formats"] == {
            "code": "python", "browser": "simple_browser", "citation": GLM4_9B.replies.built_in.citation}
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


def test_only_idle_conversations_end_and_beyond_the_limit_new_ones_wait(tmp_path: Path) -> None:
    """No client can end another's conversation by opening many: past the limit (requests without an id
    counted too) a new one is refused until one has been idle long enough to end; an ended one is told so."""
    import asyncio
    import time

    from glm4_local.server.tool_sessions import TooManyConversations, UnknownConversation

    closed: list[str] = []
    sessions = ToolSessions(lambda folder: {"python": FakeTool(folder, closed)}, ("python",), idle_seconds=100,
                            max_conversations=2, root=tmp_path / "root")
    first = asyncio.run(_use(sessions, "a"))
    assert asyncio.run(_use(sessions, "a")) == first and closed == []  # the same conversation again
    one_off = asyncio.run(_use(sessions, None))
    assert closed == [one_off.name] and not one_off.exists()  # a request without an id: ended with it
    asyncio.run(_use(sessions, "b"))
    for newcomer in ("c", None):  # a third, with an id or without: refused, and nobody else ends
        with pytest.raises(TooManyConversations) as refused:
            asyncio.run(_use(sessions, newcomer))
        assert 90 < refused.value.retry_after <= 100
    assert sorted(sessions.sessions) == ["a", "b"] and len(closed) == 1
    assert sorted(sessions.expire(now=time.monotonic() + 101)) == ["a", "b"] and not first.exists()
    with pytest.raises(UnknownConversation, match="ended after 100 s without a request; its files went with it"):
        sessions.data_dir("a")

    async def notice(conversation: str) -> str | None:
        async with sessions.session(conversation) as session:
            return session.take_notice()

    assert "ended after 100 s" in str(asyncio.run(notice("a")))  # its next request is told, once
    assert asyncio.run(notice("a")) is None and asyncio.run(notice("c")) is None
    sessions.close()
    assert not (tmp_path / "root").exists()
    assert json.dumps(sessions.offered()) == '[{"type": "python"}]'


def test_an_idle_conversation_ends_though_no_request_comes(tmp_path: Path) -> None:
    import asyncio
    import threading

    ended = threading.Event()

    class Tool(FakeTool):
        pass

    closed: list[str] = []
    sessions = ToolSessions(lambda folder: {"python": Tool(folder, closed)}, ("python",), idle_seconds=0.2,
                            root=tmp_path / "root")
    expire = sessions.expire

    def expired(now: float | None = None) -> list[str]:
        gone = expire(now)
        if gone:  # the folders are gone too once expire returns (the tools' close is only the first step)
            ended.set()
        return gone

    sessions.expire = expired  # type: ignore[method-assign]
    try:
        folder = asyncio.run(_use(sessions, "quiet"))
        assert ended.wait(30), "the idle conversation was never ended"
        assert closed == ["quiet"] and sessions.sessions == {} and not folder.exists()
    finally:
        sessions.close()
    assert sessions.reaper is not None and not sessions.reaper.is_alive()


def test_files_the_code_left_are_data_never_a_hang(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """A FIFO in /mnt/data never freezes the server, a large file streams, a name with "?" is a whole link."""
    if needs_sandbox.args[0]:
        pytest.skip(needs_sandbox.kwargs["reason"])
    server = Server(tool_gguf("files"), tmp_path, "--python")
    try:
        status, body = server.json("POST", "/v1/chat/completions",
                                   {"messages": ASK, "tools": PYTHON, "conversation_id": "files"})
        assert status == 200, body
        listed = {f["name"]: f for f in body["choices"][0]["message"]["glm4_steps"][0]["files"]}
        assert "trap.txt" not in listed  # not a regular file: never offered
        assert listed["c?d.txt"]["url"] == "/v1/glm4/files/files/c%3Fd.txt"
        assert server.request("GET", listed["c?d.txt"]["url"])[2] == b"cd"
        assert server.request("GET", "/v1/glm4/files/files/trap.txt")[0] == 404  # at once, not a hang
        assert server.json("GET", "/health")[1]["status"] == "ok"
        status, headers, data = server.request("GET", listed["big.bin"]["url"])
        assert status == 200 and headers["content-length"] == str(48 * 2**20) and data == b"z" * (48 * 2**20)
    finally:
        code, output = server.stop()
    assert code == 0 and "Traceback" not in output, output


def _stream_until_running(server: Server, conversation: str) -> tuple[Any, float]:
    """A streamed request, read until its python step is running; (the open connection, when)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {"messages": ASK, "tools": PYTHON, "stream": True, "conversation_id": conversation}
    started = time.monotonic()
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    while b'"status": "running"' not in (line := response.readline()):
        assert line, "the stream ended before the step ran"
    return connection, time.monotonic() - started


def test_a_client_that_leaves_stops_its_running_cell(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """The sleeping cell of a request whose client left is interrupted: the conversation's next request
    runs at once, not after the first cell's --python-timeout."""
    if needs_sandbox.args[0]:
        pytest.skip(needs_sandbox.kwargs["reason"])
    server = Server(tool_gguf("sleep"), tmp_path, "--python", "--python-timeout", "90")
    try:
        first, _ = _stream_until_running(server, "leaving")
        first.close()  # the client goes away while its cell sleeps
        second, waited = _stream_until_running(server, "leaving")
        second.close()
        assert waited < 30, f"the next request waited {waited:.1f} s for the abandoned cell"
    finally:
        _, output = server.stop()
    assert "CancelledError" not in output and "Traceback" not in output, output


def test_no_client_can_end_another_clients_conversation(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    server = Server(tool_gguf("chinese"), tmp_path, "--python", "--tool-conversations", "3", "--tool-idle", "3")
    client = server.client()
    try:
        for conversation in ("mine", "other-1", "other-2"):
            client.chat.completions.create(model="m", messages=ASK, tools=PYTHON,
                                           extra_body={"conversation_id": conversation})
        status, body = server.json("POST", "/v1/chat/completions", {"messages": ASK, "tools": PYTHON,
                                                                    "conversation_id": "other-3"})
        assert status == 503 and body["error"]["code"] == "too_many_conversations", body
        assert server.request("GET", "/v1/glm4/files/mine/nothing.txt")[0] == 404  # "mine" is still open ...
        assert "no file" in server.json("GET", "/v1/glm4/files/mine/nothing.txt")[1]["error"]["message"]
        deadline = time.monotonic() + 60
        while server.json("GET", "/v1/glm4/files/mine/x")[1]["error"]["code"] != "conversation_ended":
            assert time.monotonic() < deadline, "the idle conversation never ended"
            time.sleep(0.2)
        reply = client.chat.completions.create(model="m", messages=ASK, tools=PYTHON,
                                               extra_body={"conversation_id": "mine"})
        assert "ended after 3 s without a request" in (reply.choices[0].message.model_extra or {})["glm4_notice"]
        stream = client.chat.completions.create(model="m", messages=ASK, tools=PYTHON, stream=True,
                                                extra_body={"conversation_id": "other-1"})
        notices = [c.choices[0].delta.model_extra.get("glm4_notice") for c in stream if c.choices]
        assert any(n and "other-1 ended" in n for n in notices)
    finally:
        server.stop()


def test_the_documents_route_refuses_a_bomb_at_once(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """A small DOCX that expands to 300 MB of XML, and one of malformed XML: one clear 400 each, quickly,
    and the server answers /health meanwhile and stops on SIGTERM."""
    from helpers.docfixtures import docx_with

    bomb = docx_with(tmp_path / "bomb.docx", xml_bytes=300 * 2**20)
    broken = docx_with(tmp_path / "broken.docx", b"<w:document><w:body><unclosed")
    server = Server(tool_gguf("python"), tmp_path)
    try:
        for document, words in ((bomb, "expands to"), (broken, "not a readable DOCX")):
            started = time.monotonic()
            status, body = server.json("POST", "/v1/glm4/documents", {
                "name": document.name, "data": base64.b64encode(document.read_bytes()).decode()})
            assert status == 400 and words in body["error"]["message"], body
            assert time.monotonic() - started < 30
        assert server.json("GET", "/health")[1]["status"] == "ok"
    finally:
        code, output = server.stop()
    assert code == 0 and "Traceback" not in output, output


def test_logprobs_are_refused_where_the_servers_tools_take_part(python_server: Server) -> None:
    status, _, body = python_server.request("POST", "/v1/chat/completions", {
        "messages": ASK, "tools": PYTHON, "logprobs": True, "conversation_id": "conv-logprobs"})
    assert status == 400 and json.loads(body)["error"]["param"] == "logprobs"


def test_stopping_the_server_while_a_cell_runs_ends_its_stream_without_a_traceback(
        tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """Past the 3 s the server gives running requests to finish as it stops, a stream still waiting on its
    cell is cancelled: uvicorn says so in a line, and nothing prints a traceback."""
    if needs_sandbox.args[0]:
        pytest.skip(needs_sandbox.kwargs["reason"])
    server = Server(tool_gguf("sleep"), tmp_path, "--python", "--python-timeout", "90")
    try:
        connection, _ = _stream_until_running(server, "staying")  # the client stays while its cell sleeps
    finally:
        code, output = server.stop()
    connection.close()
    assert code == 0 and "CancelledError" not in output and "Traceback" not in output, output

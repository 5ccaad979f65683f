"""The server against hostile requests: schemas that used to crash it, bodies it cannot read, clients that
leave mid-request, and web pages in the user's own browser (simple cross-origin POSTs, DNS rebinding)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers.schemas import random_schema
from helpers.serving import Server

pytestmark = pytest.mark.processes  # a real server

ASK = [{"role": "user", "content": "Answer in JSON."}]
CRASHERS = [
    {"type": "array", "items": {"type": "string"}, "maxItems": 100000},
    {"type": "string", "maxLength": 100000},
    {"type": "string", "pattern": "^a{0,100000}$"},
]


@pytest.fixture(scope="module")
def server(make_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(make_gguf("f32"), tmp_path_factory.mktemp("serve"), "--ctx", "2048", "--parallel", "2",
                    "--allowed-host", "glm.lan", "--client-timeout", "2")
    yield served
    served.stop()


def alive(server: Server) -> bool:
    status, body = server.json("GET", "/health")
    return status == 200 and body["status"] == "ok" and server.process.poll() is None


def answer_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"messages": ASK, "max_tokens": 60, "temperature": 1.0, "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


@pytest.mark.parametrize("schema", CRASHERS)
def test_schemas_that_crashed_the_server_are_refused_by_keyword(server: Server, schema: dict[str, Any]) -> None:
    status, body = server.json("POST", "/v1/chat/completions", answer_format(schema))
    assert status == 400
    assert any(k in body["error"]["message"] for k in ("maxItems", "maxLength", "pattern"))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": schema},
                                                                        "required": ["a"]}}}
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        status, _ = server.json("POST", "/v1/chat/completions",
                                {"messages": ASK, "tools": [tool], "tool_choice": choice, "max_tokens": 20})
        assert status == 400
    assert alive(server)


def test_fuzzed_schemas_are_each_answered_and_the_server_stays_up(server: Server) -> None:
    rng = random.Random(7)
    statuses = []
    for _ in range(40):
        schema = random_schema(rng)
        status, body = server.json("POST", "/v1/chat/completions", answer_format(schema))
        statuses.append(status)
        assert status in (200, 400), body
        if status == 200 and body["choices"][0]["finish_reason"] == "stop":
            jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    assert alive(server) and 200 in statuses and 400 in statuses


def test_property_names_with_quotes_backslashes_and_newlines_work(server: Server) -> None:
    schema = {"type": "object", "properties": {'a"b': {"type": "boolean"}, "c\\d": {"type": "null"},
                                               "e\nf": {"enum": [1, 2]}},
              "required": ['a"b', "c\\d", "e\nf"], "additionalProperties": False}
    status, body = server.json("POST", "/v1/chat/completions", {**answer_format(schema), "max_tokens": 200})
    assert status == 200
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)


def test_a_number_of_5000_digits_is_a_400_not_a_500(server: Server) -> None:
    body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + "9" * 5000 + "}"
    status, error = server.json("POST", "/v1/chat/completions", body)
    assert status == 400 and "not valid JSON" in error["error"]["message"]
    assert alive(server)


def test_a_client_gone_mid_body_leaves_no_traceback(server: Server) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 5000\r\n\r\n{\"messages\": [")
    assert alive(server)  # and, checked when the server stops, nothing in its log: see the last test


@pytest.mark.parametrize(("content_type", "status"), [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    ("application/json; charset=utf-8", 200),
])
def test_a_post_must_be_json_as_no_simple_cross_origin_request_is(server: Server, content_type: str,
                                                                   status: int) -> None:
    body = json.dumps({"messages": ASK, "max_tokens": 3})
    assert server.request("POST", "/v1/chat/completions", body, {"Content-Type": content_type})[0] == status


@pytest.mark.parametrize(("host", "status"), [
    ("evil.example", 421), ("attacker.example.com:8000", 421), ("localhost", 200), ("127.0.0.1", 200),
    ("[::1]", 200), ("glm.lan", 200), ("GLM.LAN:1234", 200),
])
def test_only_local_names_addresses_and_allowed_hosts_are_answered(server: Server, host: str, status: int) -> None:
    """A page on a name the attacker controls, resolved to 127.0.0.1 (DNS rebinding), sends that name as Host."""
    assert server.request("GET", "/v1/models", headers={"Host": host})[0] == status


@pytest.mark.parametrize(("origin", "status"), [
    ("http://evil.example", 403), ("null", 403), ("http://localhost:{port}", 403), ("http://127.0.0.1", 403),
    ("http://127.0.0.1:{port}", 200),
])
def test_cross_origin_pages_are_refused_without_cors_origin(server: Server, origin: str, status: int) -> None:
    """Only the server's own origin (a page it serves) may call it, unless --cors-origin says otherwise."""
    body = json.dumps({"messages": ASK, "max_tokens": 3})
    headers = {"Origin": origin.format(port=server.port), "Host": f"127.0.0.1:{server.port}"}
    assert server.request("POST", "/v1/chat/completions", body, headers)[0] == status


def test_a_non_ascii_api_key_is_refused_at_start(tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    done = subprocess.run([sys.executable, "-m", "glm4_local", "serve", str(make_gguf("f32")), "--port", "0",
                           "--api-key", "ключ"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1 and "printable ASCII" in done.stderr and "Traceback" not in done.stderr


def peak_memory(server: Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc (Linux)")
def test_huge_prompts_are_refused_without_tokenizing_them_whole(server: Server) -> None:
    """Each 7.5 MB body used to cost ~0.5 GB (tokenized whole before the context check); now what exceeds the
    context is refused after reading that far, and large bodies are planned a few at a time."""
    body = json.dumps({"messages": [{"role": "user", "content": "word " * 1_500_000}], "max_tokens": 5})
    before = peak_memory(server)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: server.json("POST", "/v1/chat/completions", body), range(6)))
    for status, error in answers:
        assert status == 400 and error["error"]["code"] == "context_length_exceeded"
        assert "at least" in error["error"]["message"]
    assert peak_memory(server) - before < 300 * 2**20
    raw = json.dumps({"prompt": "x " * 3_000_000, "max_tokens": 1})
    status, error = server.json("POST", "/v1/completions", raw)
    assert status == 400 and error["error"]["param"] == "prompt"


def test_slow_headers_and_bodies_are_cut_off(server: Server) -> None:
    """--client-timeout 2: a connection that never finishes its headers is closed, a body that stalls is a 408."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert sock.recv(100) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{\"messages\"")
        assert sock.recv(100).startswith(b"HTTP/1.1 408")
    assert alive(server)


def test_zz_the_log_holds_no_traceback(server: Server) -> None:
    """Last in this file: everything above went through the same server."""
    code, log = server.stop()
    assert code == 0
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert len(log) < 20_000  # no grammar or body dumped in full

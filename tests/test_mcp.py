"""MCP servers as GLM-4 functions, through the official SDK: a server written here with the SDK itself."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mcpfixtures import SERVER

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.mcp_servers import McpServers, ServerSpec, load_config

pytestmark = pytest.mark.processes  # MCP servers

pytest.importorskip("mcp", reason="MCP servers need the [mcp] extra")



@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return script


@pytest.fixture
def notes() -> list[str]:
    return []


@pytest.fixture
def servers(server_script: Path, notes: list[str]) -> Iterator[McpServers]:
    specs = [ServerSpec("calc", sys.executable, (str(server_script), "calc"), (("GREETING", "ni hao"),)),
             ServerSpec("other", sys.executable, (str(server_script), "other")),
             ServerSpec("broken", "/nonexistent/mcp-server")]
    started = McpServers(specs, notes.append, reserved={"echo_env"})
    yield started
    started.close()


def call(servers: McpServers, name: str, arguments: dict) -> tuple[str, str]:
    [observation] = servers.run(name, json.dumps(arguments))
    return observation.metadata, observation.content


def test_tools_are_offered_as_functions_with_unique_names(servers: McpServers, notes: list[str]) -> None:
    names = [f["function"]["name"] for f in servers.functions]
    assert names[:5] == ["add", "calc.echo_env", "fail", "crash", "big"]  # echo_env: the user's own function
    assert names[5:] == ["other.add", "other.echo_env", "other.fail", "other.crash", "other.big"]
    add = servers.functions[0]["function"]
    assert add["description"] == "Add two whole numbers." and set(add["parameters"]["properties"]) == {"a", "b"}
    assert len(notes) == 1 and "'broken' did not start" in notes[0]  # one line, and the others work


def test_calls_are_forwarded(servers: McpServers) -> None:
    assert call(servers, "add", {"a": 2, "b": 40}) == ("", "42")
    assert call(servers, "other.add", {"a": 1, "b": 1}) == ("", "2")
    assert call(servers, "calc.echo_env", {}) == ("", "ni hao")
    [failed] = servers.run("fail", "{}")
    assert failed.metadata == "" and "fail" in failed.content  # the tool's own error text, for the model to read
    assert failed.shown.startswith("error: ")
    [bad] = servers.run("add", "{not json")
    assert bad.metadata == "system_error" and "not valid JSON" in bad.content


def test_a_server_that_dies_is_reported_and_the_others_go_on(servers: McpServers, notes: list[str]) -> None:
    metadata, content = call(servers, "crash", {})
    assert metadata == "system_error"
    metadata, content = call(servers, "add", {"a": 1, "b": 2})
    assert metadata == "system_error" and ("gone" in content or "failed" in content)
    assert call(servers, "other.add", {"a": 3, "b": 4}) == ("", "7")
    assert [n for n in notes if "'calc' is gone" in n] and len(notes) == 2  # the broken one's line, and this
    assert any(line.startswith("MCP calc: gone") for line in servers.describe())


def test_the_config_file_format(tmp_path: Path, server_script: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {
        "calc": {"command": sys.executable, "args": [str(server_script), "calc"], "env": {"A": "1"}},
        "remote": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer x"}}}}))
    calc, remote = load_config(config)
    assert calc.command == sys.executable and calc.env == (("A", "1"),) and remote.url == "http://127.0.0.1:9/mcp"
    for bad in ({}, {"mcpServers": []}, {"mcpServers": {"x": {}}}, {"mcpServers": {"x": {"command": "a", "args": "b"}}},
                {"mcpServers": {"x": {"command": "a", "env": {"A": 1}}}}):
        config.write_text(json.dumps(bad))
        with pytest.raises(Glm4LocalError, match=str(config).replace("\\", "\\\\")):
            load_config(config)


def test_servers_stop_with_the_chat(server_script: Path) -> None:
    servers = McpServers([ServerSpec("calc", sys.executable, (str(server_script), "calc"))], print, set())
    assert call(servers, "add", {"a": 1, "b": 1}) == ("", "2")
    servers.close()
    assert not servers.thread.is_alive()
    assert all(task.done() for task in servers.tasks)


def test_a_server_over_streamable_http(server_script: Path) -> None:
    import socket
    import subprocess
    import time

    from helpers import children

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = children.started(subprocess.Popen([sys.executable, str(server_script), "web", str(port)],
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    while True:  # until it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "the HTTP server did not start"
            time.sleep(0.1)
    servers = McpServers([ServerSpec("web", url=f"http://127.0.0.1:{port}/mcp", headers=(("X-Test", "1"),))],
                         print, set())
    try:
        assert call(servers, "add", {"a": 20, "b": 22}) == ("", "42")
    finally:
        servers.close()


def test_results_are_bounded_by_what_they_hold(servers: McpServers) -> None:
    """A large result is cut for the model as the python tool's are; one larger than a message may be is
    not read at all, and the call ends at once (not at its timeout); the server goes on."""
    import time

    [cut] = servers.run("big", json.dumps({"n": 3_000_000}))  # twice in the reply: text and structured
    assert cut.content.startswith("xxx") and cut.content.endswith("of 3,000,000 characters]")
    assert len(cut.content) < 21_000
    started = time.monotonic()
    [refused] = servers.run("big", json.dumps({"n": 50_000_000}))
    assert "larger than 8 MiB" in refused.content and time.monotonic() - started < 60
    assert call(servers, "add", {"a": 1, "b": 2}) == ("", "3")


HANGING = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)  # never answers the handshake
"""


def _gone(pid: int, seconds: float = 30) -> bool:
    import os
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too
            if stat.read().split(")")[-1].split()[0] == "Z":
                return True
        time.sleep(0.05)
    return False


def test_a_server_that_hangs_at_start_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glm4_local.tools import mcp_servers

    script, pid_file = tmp_path / "hang.py", tmp_path / "pid"
    script.write_text(HANGING)
    monkeypatch.setattr(mcp_servers, "START_TIMEOUT", 2.0)
    notes: list[str] = []
    servers = McpServers([ServerSpec("stuck", sys.executable, (str(script), str(pid_file)))], notes.append, set())
    try:
        assert notes and "did not start" in notes[0]
        assert _gone(int(pid_file.read_text()))
    finally:
        servers.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dying with the parent is Linux's prctl")
def test_a_server_dies_with_glm4_local_however_it_ends(tmp_path: Path, server_script: Path) -> None:
    import signal
    import subprocess

    from helpers import children

    pid_file = tmp_path / "pid"
    script = tmp_path / "server_with_pid.py"
    script.write_text(f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n" + SERVER)
    host = ("import sys, time\nfrom glm4_local.tools.mcp_servers import McpServers, ServerSpec\n"
            f"McpServers([ServerSpec('calc', sys.executable, ({str(script)!r}, 'calc'))], print, set())\n"
            "print('started', flush=True)\ntime.sleep(600)")
    process = children.started(subprocess.Popen([sys.executable, "-c", host], stdout=subprocess.PIPE, text=True))
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGKILL)  # no cleanup code runs at all
    process.wait()
    assert _gone(int(pid_file.read_text()))

"""The user's own tool program (`--tool-exec`): exactly the file named, its misbehaviour an observation the
model reads (not UTF-8, huge, slow, failing, missing), nothing of it outliving the call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import cli, one_line_error

from glm4_local.core.families.replies import ToolCall
from glm4_local.tools.program import run_tool

pytestmark = pytest.mark.processes  # the CLI as a child, so an abort in llama.cpp fails a test, not pytest


# -- --tool-exec runs exactly the file it names -----------------------------------------------------

def write_tool(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\nimport sys, json\ncall = json.load(sys.stdin)\n{body}\n")
    path.chmod(0o755)
    return path


def test_tool_exec_is_the_named_file_not_one_on_path(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    write_tool(tmp_path / "tool.py", "print('local')")
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    write_tool(elsewhere / "tool.py", "print('from PATH')")
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {"name": "lookup"}}]))
    env = {**os.environ, "PATH": f"{elsewhere}{os.pathsep}{os.environ['PATH']}"}
    for name in ("tool.py", "./tool.py"):
        result = cli("chat", str(scripted_gguf("tool")), "-p", "weather?", "--tools", "tools.json", "--tool-exec",
                     name, "--json", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["content"] == "Sunny day"
    os.chmod(tmp_path / "tool.py", 0o644)
    one_line_error(cli("chat", str(scripted_gguf("tool")), "-p", "x", "--tools", "tools.json", "--tool-exec",
                       "tool.py", cwd=tmp_path, env=env), "not executable")


# -- tools that misbehave ---------------------------------------------------------------------------

CALL = ToolCall("lookup", "{}")


def test_tool_output_that_is_not_utf8_is_replaced(tmp_path: Path) -> None:
    tool = write_tool(tmp_path / "t.py", "sys.stdout.buffer.write(b'ok \\xff\\xfe done')")
    assert run_tool(tool, CALL) == "ok \ufffd\ufffd done"


def test_huge_output_is_cut_with_a_note(tmp_path: Path) -> None:
    tool = write_tool(tmp_path / "t.py", "sys.stdout.write('x' * (100 * 1024 * 1024))")
    started = time.monotonic()
    result = run_tool(tool, CALL, max_output=1000)
    assert time.monotonic() - started < 10
    assert result == "x" * 1000 + "\n[output cut at 1,000 bytes]"


def test_slow_failing_and_missing_tools_are_observations(tmp_path: Path) -> None:
    slow = write_tool(tmp_path / "slow.py", "import time; time.sleep(60)")
    started = time.monotonic()
    assert "did not finish within 0.5 s" in json.loads(run_tool(slow, CALL, timeout=0.5))["error"]
    assert time.monotonic() - started < 5
    failing = write_tool(tmp_path / "fail.py", "sys.stderr.write('boom'); sys.exit(3)")
    assert json.loads(run_tool(failing, CALL)) == {"error": "the tool exited with status 3", "stderr": "boom",
                                                   "output": ""}
    missing = json.loads(run_tool(tmp_path / "none", CALL))
    assert missing["error"].startswith("cannot run none")
    noisy = write_tool(tmp_path / "noisy.py", "sys.stderr.write('e' * 1_000_000 + 'END'); sys.exit(1)")
    started = time.monotonic()
    flooded = json.loads(run_tool(noisy, CALL, timeout=30))
    assert time.monotonic() - started < 5  # a full stderr pipe never blocks the tool
    assert flooded["error"] == "the tool exited with status 1" and flooded["stderr"].endswith("END")


def chat_calling(model: Path, tool: str, folder: Path, *flags: str) -> subprocess.CompletedProcess:
    """`chat -p --json` with a model that calls `lookup`, answered by the program whose source is `tool`."""
    write_tool(folder / "lookup_tool.py", tool)
    (folder / "tools.json").write_text(json.dumps([{"type": "function", "function": {"name": "lookup"}}]))
    return cli("chat", str(model), "-p", "weather?", "--tools", "tools.json", "--tool-exec", "lookup_tool.py",
               "--json", *flags, cwd=folder)


def test_a_failing_tool_does_not_end_the_chat(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    result = chat_calling(scripted_gguf("tool"), "import time; time.sleep(60)", tmp_path, "--tool-timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["content"] == "Sunny day"


def test_a_tool_printing_more_than_the_context_holds_is_cut_and_the_chat_goes_on(
        scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """40 KB of output used to end the chat ("needs 40438 tokens of context"): now what fits is sent."""
    result = chat_calling(scripted_gguf("tool"), "print('weather report ' * 2000)", tmp_path, "--ctx", "1024")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["content"] == "Sunny day"
    assert "was cut to the" in result.stderr and "fit the context" in result.stderr


def _alive_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the tool's leftovers through /proc (Linux)")
def test_a_tool_whose_children_keep_its_output_open_is_read_and_nothing_outlives_it(tmp_path: Path) -> None:
    """Its answer is read once it exits (not after the timeout), and its background child and a `setsid`
    daemon, both holding its stdout open, are ended with it."""
    marker = f"glm4-local-test-{os.getpid()}-{tmp_path.name}"
    tool = tmp_path / "tool.sh"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(300)' {marker}"
    tool.write_text(f"#!/bin/sh\n{sleeper} &\nsetsid {sleeper} &\necho sunny\n")
    tool.chmod(0o755)
    started = time.monotonic()
    try:
        assert run_tool(tool, ToolCall("lookup", "{}"), timeout=30).strip() == "sunny"
        assert time.monotonic() - started < 15
        assert _alive_with(marker) == []
    finally:
        for pid in _alive_with(marker):
            os.kill(pid, signal.SIGKILL)

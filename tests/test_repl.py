"""The interactive chat in a real pseudo-terminal: typing, streaming, commands, Ctrl-C, Ctrl-D, resume."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from helpers import children

pytestmark = pytest.mark.processes  # the chat in a pseudo-terminal

PROMPT = "›"  # prompt_toolkit moves the cursor over the space after it


def spawn(args: list[str], home: Path, cwd: Path) -> pexpect.spawn:
    env = {"GLM4_LOCAL_HOME": str(home), "PATH": "/usr/bin:/bin", "TERM": "xterm", "COLUMNS": "100",
           "LINES": "40", "HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = children.started(pexpect.spawn(sys.executable, ["-m", "glm4_local", "chat", *args], env=env,
                                           cwd=str(cwd), encoding="utf-8", timeout=30, dimensions=(40, 100),
                                           preexec_fn=children.default_signals))
    child.expect_exact(PROMPT)
    return child


def saved(home: Path) -> list[dict]:
    files = sorted((home / "sessions").glob("*.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())
    assert set(data) == {"messages", "tools", "context"}  # one shape, always
    return data["messages"]


def ask(child: pexpect.spawn, text: str, expect: str) -> None:
    child.send(text + "\r")
    child.expect_exact(expect)
    child.expect_exact(PROMPT)


def test_conversation_autosave_and_ctrl_d(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    child = spawn([str(scripted_gguf("answer")), "--system", "你是一个乐于助人的助手"], tmp_path, tmp_path)
    ask(child, "Weather today?", "Sunny day")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert saved(tmp_path) == [{"role": "system", "content": "你是一个乐于助人的助手"},
                               {"role": "user", "content": "Weather today?"},
                               {"role": "assistant", "content": "Sunny day"}]


def test_multiline_input_and_commands(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    child = spawn([str(scripted_gguf("answer")), "--verbose"], tmp_path, tmp_path)
    child.send("line one\x1b\rline two\r")  # Esc, Enter: a new line in the same message
    child.expect_exact("Sunny day")
    child.expect(r"generated 4 tokens")
    child.expect_exact(PROMPT)
    ask(child, "/system Be brief.", "system prompt set")
    ask(child, "/save out.json", "saved to out.json")
    ask(child, "/stats", "stop: <|user|>")
    ask(child, "/undo", "removed the last exchange")
    ask(child, "/help", "/retry")
    ask(child, "/load out.json", "loaded 3 messages")
    ask(child, "/retry", "Sunny day")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert json.loads((tmp_path / "out.json").read_text())["messages"][:2] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "line one\nline two"}]
    assert [m["role"] for m in saved(tmp_path)] == ["system", "user", "assistant"]


def test_ctrl_c_stops_the_reply_and_keeps_it(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    child = spawn([str(scripted_gguf("endless")), "--ctx", "max"], tmp_path, tmp_path)
    child.send("go on forever\r")
    child.expect_exact("day day day")
    time.sleep(0.3)
    child.sendcontrol("c")
    child.expect_exact("[interrupted")
    child.expect_exact(PROMPT)
    child.send("/stats\r")  # the session goes on; " day" was drafted by prompt lookup
    child.expect(r"stop:(\s|\x1b\[[0-9;]*m)+interrupted")  # not "None" (the line may wrap after "stop:")
    child.expect(r"drafted \d+, accepted \d+")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    reply = saved(tmp_path)[-1]
    assert reply["interrupted"] is True and reply["content"].startswith(" day day day")


def test_resume_continues_the_last_conversation(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    child = spawn([str(scripted_gguf("answer"))], tmp_path, tmp_path)
    ask(child, "first", "Sunny day")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child = spawn([str(scripted_gguf("answer")), "--resume"], tmp_path, tmp_path)
    ask(child, "second", "Sunny day")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert [m["content"] for m in saved(tmp_path)] == ["first", "Sunny day", "second", "Sunny day"]


@pytest.mark.parametrize("stdin_is_tty", [True])
def test_no_model_message_in_terminal(tmp_path: Path, stdin_is_tty: bool) -> None:
    env = {"GLM4_LOCAL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = children.started(pexpect.spawn(sys.executable, ["-m", "glm4_local", "chat"], env=env,
                                           cwd=str(tmp_path), encoding="utf-8", timeout=60,
                                           preexec_fn=children.default_signals))
    child.expect_exact("No model yet. Pull glm-4-9b-chat")  # a first run in a terminal: offered, y/N
    child.expect_exact("[y/N]")
    child.send("n\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "no model; get one with: glm4-local pull" in child.before and "Traceback" not in child.before


def test_tool_call_answered_by_typing_the_result(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]))
    child = spawn([str(scripted_gguf("tool")), "--tools", str(tools)], tmp_path, tmp_path)
    child.send("Weather in Paris?\r")
    child.expect_exact("→ lookup({})")
    child.expect_exact("result›")
    child.send('{"sky": "clear"}\r')
    child.expect_exact("Sunny day")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    roles = [m["role"] for m in saved(tmp_path)]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert saved(tmp_path)[2]["content"] == '{"sky": "clear"}'


def test_ctrl_c_stops_a_running_tool_and_returns_to_the_prompt(scripted_gguf: Callable[[str], Path],
                                                               tmp_path: Path) -> None:
    """Hardening item 6: Ctrl-C cancels the tool, the call is answered as cancelled, the chat goes on."""
    tool = tmp_path / "slow.py"
    tool.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    tool.chmod(0o755)
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {"name": "lookup"}}]))
    child = spawn([str(scripted_gguf("tool")), "--tools", "tools.json", "--tool-exec", "slow.py"], tmp_path,
                  tmp_path)
    child.send("Weather?\r")
    child.expect_exact("→ lookup({})")
    time.sleep(0.5)
    started = time.monotonic()
    child.sendintr()
    child.expect_exact("[tool call cancelled]")
    child.expect_exact(PROMPT)
    assert time.monotonic() - started < 5
    messages = saved(tmp_path)
    call_id = messages[-2]["tool_calls"][0]["id"]
    assert messages[-1] == {"role": "tool", "content": '{"error": "cancelled by the user"}', "tool_call_id": call_id}
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "lookup"
    child.sendcontrol("d")
    child.expect(pexpect.EOF)

"""All Tools in the chat, end to end: scripted GGUFs that call `python`, `simple_browser` or an MCP
function, run through the real CLI (one-shot and in a terminal), the tools running for real."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from helpers.cli import invoke, one_line_error
from helpers.marks import needs_sandbox
from helpers.mcpfixtures import SERVER
from helpers.terminal import chat, saved
from helpers.toolscripts import ACTIONS, ADD, CITED, CODE, ESCAPED_REPLY
from helpers.webfixtures import write_folder

from glm4_local.chat.template import ChatTemplate
from glm4_local.chat.tool_loop import TOO_MANY_CALLS
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.families.glm4_replies import to_glm_messages

pytestmark = pytest.mark.processes  # kernels, MCP servers and the chat in a terminal

pytest.importorskip("ipykernel", reason="needs the [code] extra")


def one_shot(model: Path, *flags: str) -> dict:
    result = invoke(["chat", str(model), "-p", "go", "--json", *flags])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@needs_sandbox
def test_python_runs_in_the_kernel_and_the_model_answers(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    data = one_shot(tool_gguf("python"), "--python")
    assert data["content"] == "Sunny day"
    assert data["steps"] == [{"tool": "python", "input": CODE, "observations": [{"metadata": "", "content": "42\n"}]}]
    assert data["tool_calls"][0]["function"] == {"name": "python", "arguments": CODE}
    [written] = (tmp_path / "glm4-local-home" / "sessions").glob("*.data/hi.txt")
    assert written.read_text() == "hi"


@needs_sandbox
def test_a_chain_of_calls_is_bounded(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    data = one_shot(tool_gguf("loop"), "--python")
    assert len(data["steps"]) == 10 and data["stopped"] == "more than 10 tool calls in a row"
    assert len(data["tool_calls"]) == 11  # the 11th is made, not run
    # the terminal stops at the same call, by the same rule
    term = chat(tool_gguf("loop"), tmp_path, "--python", columns=100)
    term.send("go\r")
    term.wait_for("[stopped: the model made more than 10 tool calls in a row]")
    messages = saved(tmp_path)
    assert sum(1 for m in messages if m.get("tool_calls")) == 11 and messages[-1]["content"] == TOO_MANY_CALLS
    assert sum(1 for m in messages if m["role"] == "tool") == 11
    term.send("/exit\r")


def test_the_browser_searches_a_folder_and_opens_its_pages(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("trafilatura")
    folder = write_folder(tmp_path / "recipes")
    data = one_shot(tool_gguf("browser"), "--browser", f"folder:{folder}")
    [step] = data["steps"]
    assert [o["metadata"] for o in step["observations"]] == ["browser_result", "quote_result [7†source]"]
    assert step["observations"][0]["content"].startswith(" # 【0†Cooking†recipes】\n")
    assert step["observations"][1]["source"]["url"] == "folder://recipes/cooking.html"
    assert data["content"] == f"Sunny{CITED} day"  # the model's own text; the terminal numbers the citation


def test_mcp_functions_are_called(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("mcp")
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {
        "calc": {"command": sys.executable, "args": [str(tmp_path / "server.py"), "calc"]}}}))
    data = one_shot(tool_gguf("mcp"), "--mcp", "mcp.json")
    assert data["steps"] == [{"tool": "add", "input": ADD, "observations": [{"metadata": "", "content": "42"}]}]
    assert data["content"] == "Sunny day"


def test_without_a_sandbox_python_is_refused_in_one_line(tool_gguf: Callable[[str], Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    one_line_error(invoke(["chat", str(tool_gguf("python")), "-p", "go", "--python"]),
                   "--python runs the model's code in a sandbox", "bubblewrap", "--python-unconfined")
    one_line_error(invoke(["chat", str(tool_gguf("python")), "-p", "go", "--python-unconfined"]),
                   "asks before each run")
    one_line_error(invoke(["chat", str(tool_gguf("python")), "-p", "go", "--browser", "bing"]), "search backend")


def test_observations_render_with_their_metadata() -> None:
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                      "function": {"name": "simple_browser", "arguments": ACTIONS}}]},
                {"role": "tool", "tool_call_id": "c1", "metadata": "browser_result", "content": "R"},
                {"role": "tool", "tool_call_id": "c1", "metadata": "quote_result [7†source]", "content": "Q"}]
    text = "".join(p.text for p in ChatTemplate.of(GLM4_9B).pieces(
        to_glm_messages(messages, [{"type": "simple_browser"}])))
    assert text.endswith(f"<|user|>\nq<|assistant|>simple_browser\n{ACTIONS}<|observation|>browser_result\nR"
                         "<|observation|>quote_result [7†source]\nQ<|assistant|>")
    assert "## simple_browser" in text and "## python" not in text and "cogview" not in text


@needs_sandbox
def test_python_in_the_terminal(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(tool_gguf("python"), tmp_path, "--python", columns=100)
    assert "python (Jupyter kernel, sandboxed by bubblewrap" in term.raw
    term.send("compute\r")
    term.wait_for("Sunny day")
    screen = term.text()
    assert "print(6 * 7)" in screen and screen.index("print(6 * 7)") < screen.index("\n42\nSunny day")
    term.send("/tools\r")
    term.wait_for("/mnt/data =")
    messages = saved(tmp_path)
    assert messages[-2] == {"role": "tool", "content": "42\n", "tool_call_id": messages[-3]["tool_calls"][0]["id"]}
    [session] = (tmp_path / "sessions").glob("*.json")
    assert (session.with_suffix(".data") / "hi.txt").read_text() == "hi"  # kept beside the saved session


@needs_sandbox
def test_ctrl_c_stops_the_running_code_not_the_chat(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(tool_gguf("sleep"), tmp_path, "--python", columns=100)
    term.send("wait\r")
    term.wait_for("running python")
    assert "time.sleep(60)" in term.text()
    term.send("\x03")
    term.wait_for("[tool call cancelled]")
    assert term.child.isalive()
    term.send("/tools\r")
    term.wait_for("/mnt/data =")
    assert "cancelled" in saved(tmp_path)[-1]["content"]


def test_citations_become_numbered_references(tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("trafilatura")
    folder = write_folder(tmp_path / "recipes")
    term = chat(tool_gguf("browser"), tmp_path, "--browser", f"folder:{folder}", columns=100)
    term.send("pasta?\r")
    term.wait_for("[1] Cooking — folder://recipes/cooking.html")
    screen = term.text()
    assert "browser › search(\"pasta recipe\")" in screen and "[7] Cooking" in screen
    assert "Sunny[1] day" in screen and CITED not in screen
    assert saved(tmp_path)[-1]["content"] == f"Sunny{CITED} day"  # the conversation keeps the model's text


@needs_sandbox
def test_a_resumed_conversation_finds_its_files_and_offers_what_is_on_now(tmp_path: Path) -> None:
    from glm4_local.frontends.tool_setup import offered_tools, open_toolbox
    from glm4_local.tools.options import ToolOptions

    session = tmp_path / "sessions" / "20261203-120000.json"
    lookup = {"type": "function", "function": {"name": "lookup"}}
    built_in = GLM4_9B.replies.built_in
    toolbox = open_toolbox(ToolOptions(python=True), built_in, session, None, print, set())
    try:
        assert toolbox.python is not None and toolbox.python.data_dir == session.with_suffix(".data")
        assert toolbox.python.run("python", "open('/mnt/data/kept.txt', 'w').write('x')")[0].content == "1"
    finally:
        toolbox.close()
    again = open_toolbox(ToolOptions(python=True), built_in, session, None, print, set())  # --resume: the same session
    try:
        assert again.python.run("python", "print(open('kept.txt').read())")[0].content == "x\n"
        stale_mcp = {"type": "function", "function": {"name": "add"}, "mcp_server": "calc"}  # offered anew, if on
        saved_tools = [{"type": "simple_browser"}, lookup, {"type": "python"}, stale_mcp]  # no browser now
        assert offered_tools(saved_tools, again) == [{"type": "python"}, lookup]
    finally:
        again.close()


@pytest.mark.parametrize(("flags", "extra"), [(["--python"], "code"), (["--browser", "ddg"], "browser"),
                                              (["--mcp", "mcp.json"], "mcp")])
def test_a_missing_extra_is_named_in_one_line(tool_gguf: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch,
                                              flags: list[str], extra: str) -> None:
    import importlib.util

    from glm4_local.tools.extras import EXTRAS

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in EXTRAS[extra] else real(name, *a))
    Path("mcp.json").write_text('{"mcpServers": {}}')
    one_line_error(invoke(["chat", str(tool_gguf("python")), "-p", "go", *flags]), f'pip install "glm4-local[{extra}]"')


@needs_sandbox
def test_the_terminal_shows_control_sequences_from_elsewhere_as_text(tool_gguf: Callable[[str], Path],
                                                                     tmp_path: Path) -> None:
    """Code's output and the model's own reply reach the terminal with their escapes made visible: no
    clipboard write (OSC 52), no title change, no screen clear, no carriage return over the text."""
    term = chat(tool_gguf("escapes"), tmp_path, "--python", columns=120)
    term.send("go\r")
    term.wait_for("day")
    term.pump(0.5)
    for sequence in ("\x1b]52", "\x1b]0;TITLE-SET", "\x1b]0;REPLY-TITLE", "\x1b[2J", "after\rover"):
        assert sequence not in term.raw, sequence
    screen = term.text()
    assert "\\x1b]52;c;cHduZWQ=\\x07" in screen and "after" in screen and "over" in screen  # nothing overwritten
    assert "\\x1b]0;REPLY-TITLE\\x07" in screen and term.screen.title == ""
    messages = saved(tmp_path)  # the conversation keeps the exact text: only the screen shows it escaped
    assert messages[-1]["content"] == f"Sunny{ESCAPED_REPLY} day"
    result = invoke(["chat", str(tool_gguf("escapes")), "-p", "go", "--python"])
    assert result.stdout == f"Sunny{ESCAPED_REPLY} day\n"  # piped, the answer is the model's exact text


@needs_sandbox
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_closed_terminal_or_kill_leaves_no_kernel_files_behind(tool_gguf: Callable[[str], Path], tmp_path: Path,
                                                                 sig: str) -> None:
    import signal

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    term = chat(tool_gguf("python"), tmp_path, "--python", columns=100, env={"TMPDIR": str(private_tmp)})
    term.send("compute\r")
    term.wait_for("Sunny day")
    assert list(private_tmp.glob("glm4k-*"))  # the kernel's key and sockets, while it runs
    term.child.kill(getattr(signal, sig))
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()
    assert term.child.exitstatus == 128 + getattr(signal, sig) or term.child.signalstatus is None
    assert not list(private_tmp.glob("glm4k-*"))
    assert saved(tmp_path)[-1]["content"] == "Sunny day"

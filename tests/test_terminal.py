"""The chat and the CLI as a person sees them: a pseudo-terminal read through a terminal emulator (pyte)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from helpers.terminal import PROMPT, Terminal, chat, saved

pytestmark = pytest.mark.processes  # the CLI in a pseudo-terminal


def test_a_long_reply_wraps_and_stays_visible(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("endless"), tmp_path, "--max-tokens", "41")
    term.send("go\r")
    term.wait_for("[cut:")
    term.pump(0.5)
    screen = term.text()
    assert screen.count("day") == 40, screen  # all 40 words, wrapped over several 60-column lines
    assert sum(1 for line in screen.splitlines() if "day" in line) >= 3


def test_unknown_commands_are_not_sent(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("answer"), tmp_path)
    term.send("/foo\r")
    term.wait_for("unknown command /foo; /help lists them")
    assert saved(tmp_path) == []
    term.send("//foo\r")
    term.wait_for("Sunny day")
    term.pump(0.3)
    assert saved(tmp_path)[0] == {"role": "user", "content": "/foo"}


def test_ctrl_c_works_in_a_chat_started_with_ctrl_c_ignored(scripted_gguf: Callable[[str], Path],
                                                               tmp_path: Path) -> None:
    """Started from `nohup` or a background job, a program inherits SIGINT ignored; the chat owns its
    terminal, so it restores Ctrl-C: the reply still stops and the chat goes on."""
    term = chat(scripted_gguf("endless"), tmp_path, "--ctx", "max",
                preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    term.send("go on\r")
    term.wait_for("day day day")
    term.send("\x03")
    term.wait_for("[interrupted")
    assert term.child.isalive()


def test_ctrl_c_at_the_prompt_says_how_to_leave(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("endless"), tmp_path, "--ctx", "max")
    term.send("go on\r")
    term.wait_for("day day day")
    term.send("\x03")  # stops the reply
    term.wait_for("[interrupted")
    term.send("\x03")
    term.wait_for("(Ctrl-D or /exit to leave)")
    term.send("\x03")
    term.pump(0.5)
    assert term.child.isalive()
    screen = term.text()
    kept = saved(tmp_path)[-1]["content"]
    if "GLM-4 chat with" in screen:  # nothing scrolled away: every word on screen once, none twice
        # (the one word in flight when Ctrl-C lands may be kept without having been drawn)
        assert kept.count("day") - 1 <= screen.count("day") <= kept.count("day"), screen
    term.send("/exit\r")
    term.wait_for("saved to")
    term.pump(0.5)
    assert "continuewith:glm4-localchat--resume" in "".join(term.text().split())  # however it wrapped
    assert not term.child.isalive() or term.child.expect(pexpect.EOF) == 0


def test_signs_of_life_while_loading_and_thinking(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("answer"), tmp_path)
    assert "loading" in term.raw
    term.send("hi\r")
    term.wait_for("Sunny day")
    assert "thinking" in term.raw


def test_quantizing_shows_real_progress(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    term = Terminal(["-m", "glm4_local", "convert", str(make_checkpoint()), "-t", "q4_0", "-o",
                     str(tmp_path / "o.gguf")], tmp_path, tmp_path, columns=140)
    term.wait_for("wrote")
    assert "Quantizing to Q4_0" in term.raw and "17/17 tensors" in term.raw
    assert any(f"{i}/17 tensors" in term.raw for i in range(1, 17))  # it moved between start and end


def test_verify_shows_it_is_working(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path],
                                      tmp_path: Path) -> None:
    term = Terminal(["-m", "glm4_local", "verify", str(make_gguf("q8_0")), "--source", str(make_checkpoint())],
                    tmp_path, tmp_path, columns=120)
    term.wait_for("OK")
    assert "reference forward pass" in term.raw


def test_cut_replies_are_marked_and_resume_shows_the_last_exchange(scripted_gguf: Callable[[str], Path],
                                                                     tmp_path: Path) -> None:
    term = chat(scripted_gguf("endless"), tmp_path, "--max-tokens", "5")
    term.send("go\r")
    term.wait_for("[cut: the reply reached max_tokens (5)")
    term.send("\x04")
    term.wait_for("saved to")
    term.child.expect(pexpect.EOF)
    again = chat(scripted_gguf("endless"), tmp_path, "--resume", "--max-tokens", "5")
    assert "you: go" in again.raw and "day day" in again.text()


def test_a_full_context_is_marked(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("endless"), tmp_path, "--ctx", "64")
    term.send("go\r")
    term.wait_for("[cut: the context is full")


def test_system_retry_set_and_show(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("answer"), tmp_path, "--system", "Be brief.")
    for keys, expected in (("/system\r", "system prompt: Be brief."), ("/retry\r", "nothing to retry yet"),
                           ("/system --clear\r", "system prompt removed"), ("/system\r", "no system prompt"),
                           ("/set temp 0.2\r", "temp = 0.2"), ("/set top_k many\r", "top_k takes"),
                           ("/show\r", "temp 0.2")):
        term.send(keys)
        term.wait_for(expected)


def test_tools_in_the_terminal(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {"name": "lookup"}}]))
    term = chat(scripted_gguf("tool"), tmp_path, "--tools", "tools.json", columns=100)
    assert "tools: lookup (you type results)" in term.raw
    term.send("weather?\r")
    term.wait_for("type what lookup returned")
    term.wait_for("result›")
    term.send("\r")
    term.wait_for("an empty result is not sent")
    term.send("\x03")
    term.wait_for("[tool call cancelled]")
    term.pump(0.3)
    last = saved(tmp_path)[-1]
    assert last["role"] == "tool" and "cancelled" in last["content"] and last["tool_call_id"]


def run_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glm4_local", *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, timeout=60, env={**os.environ, "COLUMNS": "100"})


def test_help_and_messages(tmp_path: Path) -> None:
    assert run_cli("--version", cwd=tmp_path).stdout.startswith("glm4-local ")
    for command in ("pull", "list", "rm", "convert", "info", "verify", "repair", "eval", "chat", "render", "doctor"):
        text = run_cli(command, "--help", cwd=tmp_path).stdout
        assert "Examples:" in text and "<bool>" not in text, command
    convert_help = run_cli("convert", "--help", cwd=tmp_path).stdout
    assert "`glm4-local pull REPO` also converts" in " ".join(convert_help.split())
    chat_help = run_cli("chat", "--help", cwd=tmp_path).stdout
    assert "/set NAME VALUE" in chat_help and "defaults come from the GGUF" in chat_help
    for flag in ("--top-p", "--top-k", "--min-p", "--repeat-penalty", "--seed", "--threads", "--flash-attn",
                 "--mlock", "--no-mmap", "--huge-pages"):
        line = next(line for line in chat_help.splitlines() if line.strip().startswith(flag))
        assert len(line.split(flag, 1)[1].strip()) > 10, line  # a description follows the flag
    missing = run_cli("chat", cwd=tmp_path, stdin="hello")
    assert missing.returncode == 1
    assert "no model found (looked in ./models, which does not exist" in missing.stderr
    assert "glm4-local pull" in missing.stderr and "nothing to answer" not in missing.stderr


def test_autosave_has_one_shape(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    term = chat(scripted_gguf("answer"), tmp_path)
    term.send("hi\r")
    term.wait_for("Sunny day")
    term.pump(0.3)
    files = list((tmp_path / "sessions").glob("*.json"))
    assert json.loads(files[0].read_text()) == {"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "Sunny day"}],
                                                "tools": [], "context": 4096}


def test_piping_the_chat_keeps_the_prompt_on_the_terminal(scripted_gguf: Callable[[str], Path],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    term = Terminal(["-c", f"{sys.executable} -m glm4_local chat {scripted_gguf('answer')} | tee {out}"],
                    tmp_path, tmp_path, program="/bin/sh")
    term.wait_for(PROMPT)
    term.send("hi\r")
    term.wait_for("Sunny day")
    term.send("\x04")
    term.child.expect(pexpect.EOF)
    assert out.read_text() == "Sunny day\n"  # only the reply went down the pipe
    assert "\x1b" not in out.read_text()


@pytest.mark.parametrize("shape", ["plain"])
def test_json_usage_counts_every_model_call(scripted_gguf: Callable[[str], Path], tmp_path: Path,
                                               shape: str) -> None:
    tool = tmp_path / "tool.py"
    tool.write_text(f"#!{sys.executable}\nprint('{{}}')\n")
    tool.chmod(0o755)
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {"name": "lookup"}}]))
    result = run_cli("chat", str(scripted_gguf("tool")), "-p", "weather?", "--tools", "tools.json",
                     "--tool-exec", "tool.py", "--json", cwd=tmp_path)
    data = json.loads(result.stdout)
    assert data["usage"]["prompt_tokens"] >= data["timings"]["prompt_tokens_evaluated"]


STREAM_WORDS = """
import sys, time
from rich.console import Console
from glm4_local.frontends.reply_view import ReplyView
written = 0
print("start", flush=True)
try:
    with ReplyView(Console(highlight=False)) as view:
        while True:
            view.write(" day")
            written += 1
            time.sleep(0.003)
except KeyboardInterrupt:
    pass
print(f"written {written} END", flush=True)
"""


@pytest.mark.parametrize("words_before_ctrl_c", [37, 52, 68, 81, 99, 113])
def test_ctrl_c_while_a_reply_is_drawn_leaves_no_stale_line(tmp_path: Path, words_before_ctrl_c: int) -> None:
    """The terminal echoed ^C into the region being redrawn; the extra wrap left a stale copy of a line on
    screen about half the time. The screen holds exactly the words written, once."""
    term = Terminal(["-c", STREAM_WORDS], tmp_path, tmp_path)
    term.wait_for("start")
    while term.raw.count("day") < words_before_ctrl_c:
        term.pump(0.05)
    term.send("\x03")
    term.wait_for("END")
    written = int(term.raw.split("written ")[1].split()[0])
    assert term.text().count("day") == written

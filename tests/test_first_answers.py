"""What a new user met after the first answer (issue 29, §3): a resumed conversation keeps its context
and shows documents by name; --resume takes a file; no hint at a flag that cannot help; doctor counts the
models it found; counts read as English."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from helpers.cli import invoke, one_line_error
from helpers.terminal import chat

from glm4_local.core.words import counted


def leave(term: object) -> None:
    term.send("\x04")  # type: ignore[attr-defined]
    term.child.expect(pexpect.EOF)  # type: ignore[attr-defined]


@pytest.mark.processes
def test_a_resumed_conversation_keeps_its_context_and_shows_documents_by_name(
        scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("The ferry leaves at nine. " * 40)
    term = chat(scripted_gguf("answer"), tmp_path, "--ctx", "2048", "--file", "notes.txt", columns=100)
    term.send("When?\r")
    term.wait_for("Sunny day")
    term.pump(0.3)
    leave(term)
    [saved] = (tmp_path / "sessions").glob("*.json")
    assert json.loads(saved.read_text())["context"] == 2048
    again = chat(scripted_gguf("answer"), tmp_path, "--resume", columns=100)
    again.wait_for("resumed")
    again.pump(0.5)
    screen = again.text()
    assert "context 2,048 tokens" in screen and "(1 message" not in screen, screen  # not the default 8192
    assert "you: [notes.txt, 1,040 characters] When?" in screen, screen
    assert "The ferry leaves" not in again.raw  # the document's text is not printed again
    leave(again)


def test_a_resumed_conversation_says_when_its_context_cannot_be_had(scripted_gguf: Callable[[str], Path],
                                                                    tmp_path: Path) -> None:
    conversation = tmp_path / "held.json"
    conversation.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [],
                                        "context": 32768}))
    result = invoke(["chat", str(scripted_gguf("answer")), "-p", "again", "--resume-file", str(conversation)])
    assert result.exit_code == 0 and result.stdout == "Sunny day\n", result.stderr
    assert result.stderr == ("warning: this conversation was held in a 32,768-token context; tiny-f32.gguf was "
                             "trained for 4,096, so it reopens in that (its oldest turns may be left out)\n")
    given = invoke(["chat", str(scripted_gguf("answer")), "-p", "again", "--resume-file", str(conversation),
                    "--ctx", "1024"])
    assert (given.exit_code, given.stderr) == (0, "")  # --ctx wins over the context it was held in


@pytest.mark.processes
def test_resume_takes_a_conversation_file(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    exported = tmp_path / "exported.json"
    first = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "Sunny day"}]
    exported.write_text(json.dumps({"messages": first, "tools": []}))
    term = chat(scripted_gguf("answer"), tmp_path, "--resume", str(exported), columns=100)
    term.wait_for(f"resumed {exported} (2 messages")
    term.send("second\r")
    term.wait_for("Sunny day")
    term.pump(0.3)
    leave(term)
    assert json.loads(exported.read_text())["messages"] == first  # the export is kept as it was
    [autosaved] = (tmp_path / "sessions").glob("*.json")
    assert [m["content"] for m in json.loads(autosaved.read_text())["messages"]] == [
        "first", "Sunny day", "second", "Sunny day"]


def test_no_hint_at_a_context_the_model_cannot_have(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("The quick brown fox jumps over the lazy dog. " * 600)
    model = str(scripted_gguf("answer"))
    result = invoke(["chat", model, "-p", "Summarise", "--ctx", "max", "--file", "long.txt"])
    one_line_error(result, "long.txt is", "more than the 4,096 this model was trained for", "shorten it")
    assert "--ctx" not in result.stderr
    capped = invoke(["chat", model, "-p", "Summarise", "--ctx", "8192", "--file", "long.txt"])
    assert capped.stderr.splitlines()[0] == ("warning: --ctx 8,192 is more than the 4,096 tokens tiny-f32.gguf was "
                                             "trained for; it gets 4,096")
    assert "--ctx" not in capped.stderr.splitlines()[1]


def test_doctor_counts_the_models_it_found(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(scripted_gguf("answer"), tmp_path / "models" / name)
    result = invoke(["doctor"])
    assert result.exit_code == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("Models")]
    assert "./models, with 2 models" in line and "./models, which has no .gguf file" not in line, line


def test_counts_read_as_english() -> None:
    assert [counted(n, "result") for n in (0, 1, 2, 1000)] == ["0 results", "1 result", "2 results",
                                                               "1,000 results"]


@pytest.mark.processes
def test_the_context_plan_line_wraps_between_words(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    model = tmp_path / "glm-4-9b-chat-with-a-file-name-long-enough-to-wrap-the-line-Q4_K_M.gguf"
    shutil.copy(scripted_gguf("answer"), model)
    term = chat(model, tmp_path, columns=100)
    term.pump(0.3)
    lines = term.text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(model.name))
    words = lines[start].split() + lines[start + 1].split()
    assert len(lines[start]) > 60 and words[0] == model.name + ":", lines[start:start + 2]  # it did wrap
    for word in ("context", "4,096", "tokens", "(trained", "4,096),", "KV", "cache", "f16,", "flash", "attention;",
                 "of", "RAM", "left"):
        assert word in words, (word, lines[start:start + 2])  # whole: cut between words, not inside one
    leave(term)

"""The chat page's own script: its unit tests (tests/js, node's built-in runner), fed a conversation that
`glm4-local chat` really saved, the user message it sends with documents and the family's citation
pattern, so both sides agree byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from glm4_local.chat.session import Autosave, Conversation, user_message
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.families.replies import ToolCall
from glm4_local.documents.form import Document
from glm4_local.tools.observation import Observation

pytestmark = pytest.mark.processes  # node, on the page's script tests

JS_TESTS = Path(__file__).parent / "js"


def saved_chat(path: Path) -> Path:
    """A conversation as the terminal chat autosaves it: a system prompt, a document, a python call and its
    result, a browser quote with its metadata, an answer."""
    call = ToolCall("python", "print(6 * 7)").as_message()
    call_id = call["tool_calls"][0]["id"]
    conversation = Conversation(tools=[{"type": "python"}, {"type": "simple_browser"}])
    conversation.set_system("简洁地回答。")
    note = Document("笔记.md", "# 笔记\nGLM-4 读这个。", "text")
    conversation.messages += [
        {"role": "user", "content": "里面有什么？", "documents": [note.as_data()]},
        call, Observation("", "42\n").as_message() | {"tool_call_id": call_id},
        {"role": "assistant", "content": "42【0†source】", "interrupted": True},
    ]
    Autosave(path).save(conversation)
    return path


def test_the_page_scripts_pass_their_unit_tests(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the page's script tests run with node --test; Node.js 18 or newer)")
    saved = saved_chat(tmp_path / "saved.json")
    documents = [Document("a.md", "alpha", "text"), Document("b.txt", "beta", "text")]
    sent = user_message(" what? ", [d.as_data() for d in documents])  # what ChatEngine.send adds
    env = {**os.environ, "GLM4_CHAT_SAVED": str(saved), "GLM4_USER_MESSAGE": json.dumps(sent),
           "GLM4_CITATION": GLM4_9B.replies.built_in.citation or ""}
    run = subprocess.run([node, "--test", *sorted(str(p) for p in JS_TESTS.glob("*.test.mjs"))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout and "# skipped 0" in run.stdout

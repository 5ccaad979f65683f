"""A program in a pseudo-terminal, read through a terminal emulator (pyte) as a person sees it; the chat
started in one; what its autosave holds."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte

from helpers import children

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "›"


class Terminal:
    """A program in a pseudo-terminal of `columns` × `rows`, with what a person would see on screen."""

    def __init__(self, args: list[str], cwd: Path, home: Path, columns: int = 60, rows: int = 24,
                 program: str = sys.executable, preexec: Callable[[], None] = children.default_signals,
                 env: dict[str, str] | None = None) -> None:
        env = {"GLM4_LOCAL_HOME": str(home), "PATH": os.environ["PATH"], "TERM": "xterm", "HOME": str(home),
               "PYTHONPATH": str(ROOT), "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": str(columns),
               "LINES": str(rows), **(env or {})}
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""
        self.child = children.started(pexpect.spawn(program, args, env=env, cwd=str(cwd), encoding="utf-8",
                                                    timeout=30, dimensions=(rows, columns),
                                                    preexec_fn=preexec))

    def pump(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.raw += data
            self.stream.feed(data)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.raw:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; screen:\n{self.text()}")
            self.pump(0.1)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def send(self, keys: str) -> None:
        self.child.send(keys)


def chat(model: Path, tmp_path: Path, *args: str, columns: int = 60,
         preexec: Callable[[], None] = children.default_signals, env: dict[str, str] | None = None) -> Terminal:
    term = Terminal(["-m", "glm4_local", "chat", str(model), *args], tmp_path, tmp_path, columns=columns,
                    preexec=preexec, env=env)
    term.wait_for(PROMPT)
    return term


def saved(home: Path) -> list[dict]:
    files = sorted((home / "sessions").glob("*.json"))
    return json.loads(files[-1].read_text())["messages"] if files else []

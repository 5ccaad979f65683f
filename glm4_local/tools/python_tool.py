"""GLM-4's `python` tool: the model's code in a stateful Jupyter kernel, answered as THUDM's demo answers.

To the model: the cell's last output (a stream's text, else a result's text/plain), `[Image]` for a
picture, an error's traceback without ANSI colours, `Timed out` past the limit. A picture is saved as
a PNG in the data folder for the user. A run of stream messages counts as one output (how stdout is
split into messages depends only on flush timing). The kernel runs in the sandbox unless the user
chose to run code unconfined, and then each cell is confirmed first.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glm4_local.core.families.glm4_replies import PYTHON
from glm4_local.tools.kernel import CellResult, Kernel, KernelError
from glm4_local.tools.observation import Confirm, Observation, system_error
from glm4_local.tools.sandbox import Limits, Sandbox, rlimits

NAME = PYTHON
DEFAULT_TIMEOUT = 60.0  # what GLM-4's prompt promises the model
MAX_OUTPUT_CHARS = 20_000
ANSI = re.compile(r"(\x9B|\x1B\[|\u001b\[)[0-?]*[ -/]*[@-~]")  # the demo's pattern
TIMED_OUT = "Timed out"
DECLINED = "The user declined to run this code."


def _merged(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if last and output["output_type"] == last["output_type"] == "stream" and output["name"] == last["name"]:
            merged[-1] = {**last, "text": last["text"] + output["text"]}
        else:
            merged.append(output)
    return merged


def _model_text(last: dict[str, Any] | None) -> str:
    """What the model reads of a cell, as the demo gave it: its last output as the user sees it, except that
    printed text keeps its closing newlines."""
    if last is None:
        return ""
    return _cut(str(last["text"]) if last["output_type"] == "stream" else _text(last))


def _text(output: dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return str(output["text"]).rstrip("\n")
    data = output.get("data", {})
    return "[Image]" if "image/png" in data else str(data.get("text/plain", ""))


def _cut(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[output cut: the first {MAX_OUTPUT_CHARS:,} of {len(text):,} characters]"


class PythonTool:
    """One conversation's kernel and data folder (its /mnt/data)."""

    def __init__(self, data_dir: Path, sandbox: Sandbox | None, timeout: float = DEFAULT_TIMEOUT,
                 confirm: Confirm | None = None, limits: Limits | None = None) -> None:
        if sandbox is None and confirm is None:
            raise ValueError("code without a sandbox runs only when each cell is confirmed")
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.timeout = timeout
        self.confirm = confirm
        preexec = rlimits(limits or Limits()) if sandbox else None
        self.kernel = Kernel(data_dir, sandbox.wrap if sandbox else None, preexec)
        self.images = itertools.count(1)

    def describe(self) -> str:
        where = f"sandboxed by {self.sandbox.kind}" if self.sandbox else "UNCONFINED, each cell asked first"
        return f"python (Jupyter kernel, {where}; /mnt/data = {self.data_dir}; {self.timeout:g} s a cell)"

    def run(self, name: str, payload: str) -> Sequence[Observation]:
        if self.confirm is not None and self.sandbox is None and not self.confirm(payload):
            return [Observation("", DECLINED)]
        try:
            cell = self.kernel.execute(payload, self.timeout)
        except KernelError as e:
            return [system_error(str(e))]
        return [self._observation(cell)]

    def _observation(self, cell: CellResult) -> Observation:
        if cell.timed_out:
            return Observation("", TIMED_OUT, f"timed out after {self.timeout:g} s (interrupted)")
        images = [self._save_png(o["data"]["image/png"]) for o in cell.outputs if "image/png" in o.get("data", {})]
        if cell.status == "error":
            error = next(o for o in reversed(cell.outputs) if o["output_type"] == "error")
            return Observation("", _cut(ANSI.sub("", "\n".join(error.get("traceback", [])))))
        outputs = _merged(cell.outputs)
        shown = _cut("\n".join(_text(o) for o in outputs))  # the user sees every output; the model the last
        plot = images[-1] if images else None  # shown to the user even when text came after it
        return Observation("", _model_text(outputs[-1] if outputs else None), shown, image=plot)

    def _save_png(self, encoded: str) -> Path:
        """A new file, never through a name the sandboxed code made: it may have left a symbolic link
        there pointing outside the sandbox, and this process writes unconfined."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.data_dir / f"image-{next(self.images)}.png"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as file:
                file.write(base64.b64decode(encoded))
            return path

    def interrupt(self) -> None:
        self.kernel.interrupt()

    def close(self) -> None:
        self.kernel.close()

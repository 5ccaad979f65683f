"""GLM-4's `python` tool: the model's code in a stateful Jupyter kernel, answered as THUDM's demo answers.

To the model: the cell's last output (a stream's text, else a result's text/plain), `[Image]` for a
picture, an error's traceback without ANSI colours, `Timed out` past the limit. A picture is saved as
a PNG in the data folder for the user. A run of stream messages counts as one output (how stdout is
split into messages depends only on flush timing). The kernel runs in the sandbox unless the user
chose to run code unconfined, and then each cell is confirmed first. While a cell runs the data folder
is measured (POLL s apart): one that grows past its quota ends the kernel at once.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from glm4_local.tools.cell import CellResult, Output
from glm4_local.tools.data_folder import Usage, usage
from glm4_local.tools.kernel import MAX_MESSAGE_BYTES, Check, Kernel, KernelError, unconfined
from glm4_local.tools.observation import Confirm, Observation, cut, system_error
from glm4_local.tools.options import PYTHON_TIMEOUT
from glm4_local.tools.sandbox import Launch, Limits, Sandbox, size_text

ANSI = re.compile(r"(\x9B|\x1B\[|\u001b\[)[0-?]*[ -/]*[@-~]")  # the demo's pattern
TIMED_OUT = "Timed out"
DECLINED = "The user declined to run this code."


def _model_text(last: Output) -> str:
    """What the model reads of a cell, as the demo gave it: its last output as the user sees it, except that
    printed text keeps its closing newlines."""
    return cut(last.text, last.length) if last.kind == "stream" else _text(last)


def _text(output: Output) -> str:
    if output.kind == "stream":
        return output.text.rstrip("\n")
    return "[Image]" if output.png is not None or output.image_note else output.text


class PythonTool:
    """One conversation's kernel and data folder (its /mnt/data)."""

    def __init__(self, data_dir: Path, sandbox: Sandbox | None, timeout: float = PYTHON_TIMEOUT,
                 confirm: Confirm | None = None, limits: Limits | None = None) -> None:
        if sandbox is None and confirm is None:
            raise ValueError("code without a sandbox runs only when each cell is confirmed")
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.timeout = timeout
        self.confirm = confirm
        self.limits = limits or Limits()
        self.kernel = Kernel(data_dir, self._launch if sandbox is not None else unconfined)
        self.images = itertools.count(1)

    def _launch(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path) -> Launch:
        assert self.sandbox is not None
        return self.sandbox.launch(argv, data_dir, ipc_dir, self.limits)

    def describe(self) -> str:
        if self.sandbox is None:
            return f"python (Jupyter kernel, UNCONFINED, each cell asked first; {self.timeout:g} s a cell)"
        bounds = "; ".join(self.sandbox.bounds(self.limits))
        return (f"python (Jupyter kernel, sandboxed by {self.sandbox.kind}; /mnt/data = {self.data_dir}; "
                f"{self.timeout:g} s a cell; {bounds})")

    def run(self, name: str, payload: str) -> Sequence[Observation]:
        if self.confirm is not None and self.sandbox is None and not self.confirm(payload):
            return [Observation("", DECLINED)]
        try:
            cell = self.kernel.execute(payload, self.timeout, self._quota_check())
        except KernelError as e:
            return [system_error(str(e))]
        return [self._observation(cell)]

    def _usage(self) -> Usage:
        return usage(self.data_dir, self.limits.data_files)

    def _quota_check(self) -> Check:
        """Ends the kernel when the cell makes /mnt/data larger than its quota (what was there before
        the cell may stay: the code can delete files)."""
        before = self._usage()
        limits = self.limits

        def check() -> str | None:
            now = self._usage()
            if now.bytes > limits.data_bytes and now.bytes > before.bytes:
                return f"/mnt/data grew past its {size_text(limits.data_bytes)}"
            if now.files > limits.data_files and now.files > before.files:
                return f"/mnt/data grew past {limits.data_files:,} files"
            return None

        return check

    def _observation(self, cell: CellResult) -> Observation:
        if cell.stopped is not None:
            return system_error(f"the code was stopped: {cell.stopped}; the kernel was restarted and its "
                                "variables are lost; delete files in /mnt/data before writing more")
        if cell.timed_out:
            return Observation("", TIMED_OUT, f"timed out after {self.timeout:g} s (interrupted)")
        if cell.interrupted:
            return Observation("", "Interrupted", "interrupted")
        saved = [self._save_png(o) for o in cell.outputs if o.png is not None]
        images = [path for path in saved if path is not None]
        error = next((o for o in reversed(cell.outputs) if o.kind == "error"), None)
        if cell.status == "error" and error is not None:
            return Observation("", cut(ANSI.sub("", error.text), error.length))
        outputs = list(cell.outputs)
        notes = [o.image_note for o in outputs if o.image_note]
        if cell.dropped:
            notes.append(f"{cell.dropped:,} earlier outputs not kept")
        if cell.lost:
            notes.append(f"an output larger than {size_text(MAX_MESSAGE_BYTES)} was not received")
        shown = cut("\n".join([_text(o) for o in outputs] + [f"[{note}]" for note in dict.fromkeys(notes)]))
        plot = images[-1] if images else None  # shown to the user even when text came after it
        text = _model_text(outputs[-1]) if outputs else f"[{notes[-1]}]" if cell.lost else ""
        return Observation("", text, shown, image=plot)

    def _save_png(self, output: Output) -> Path | None:
        """A new file, never through a name the sandboxed code made: it may have left a symbolic link
        there pointing outside the sandbox, and this process writes unconfined. Counted against the
        data folder's quota like the code's own files."""
        try:
            data = base64.b64decode(output.png or "", validate=False)
        except (binascii.Error, ValueError):
            output.image_note = "a picture that was not valid base64 was not kept"
            return None
        if self._usage().bytes + len(data) > self.limits.data_bytes:
            output.image_note = "a picture was not saved: /mnt/data is full"
            return None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.data_dir / f"image-{next(self.images)}.png"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            return path

    def interrupt(self) -> None:
        """Stop the running cell; from any thread (the one running it does the stopping)."""
        self.kernel.request_stop()

    def close(self) -> None:
        self.kernel.close()

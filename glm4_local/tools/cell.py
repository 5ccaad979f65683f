"""What a cell sent back, kept within bounds whatever the code printed: a run of printed text is one
output, each output keeps at most MAX_KEPT_CHARS of its text (and counts the rest), pictures at most
MAX_IMAGE_BYTES each and MAX_IMAGES among the outputs kept, and only the last MAX_OUTPUTS outputs are kept."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_KEPT_CHARS = 100_000  # far more than the model (20,000) or the terminal is shown
MAX_OUTPUTS = 100
MAX_IMAGES = 8
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # a decoded PNG
MAX_TRACEBACK_LINES = 200


def _kept(text: str) -> str:
    return text[:MAX_KEPT_CHARS]


@dataclass
class Output:
    kind: str  # stream, execute_result, display_data, error
    text: str = ""  # at most MAX_KEPT_CHARS of it
    length: int = 0  # of the whole text
    name: str = ""  # a stream's (stdout, stderr)
    png: str | None = None  # base64, for a picture kept
    image_note: str = ""  # why a picture was not kept

    def append(self, text: str) -> None:
        if len(self.text) < MAX_KEPT_CHARS:
            self.text = _kept(self.text + text)
        self.length += len(text)


@dataclass
class CellResult:
    outputs: deque[Output] = field(default_factory=lambda: deque(maxlen=MAX_OUTPUTS))
    timed_out: bool = False
    interrupted: bool = False  # stopped because someone asked (the client went away)
    stopped: str | None = None  # why the kernel was ended while the cell ran (a limit)
    status: str = "ok"
    dropped: int = 0  # outputs not kept (more than MAX_OUTPUTS)
    lost: int = 0  # messages never received (larger than the kernel connection takes)

    @property
    def images(self) -> int:
        return sum(o.png is not None for o in self.outputs)

    def _append(self, output: Output) -> None:
        if len(self.outputs) == MAX_OUTPUTS:
            self.dropped += 1
        self.outputs.append(output)

    def add(self, kind: str, content: Any) -> None:
        """One iopub message of the cell (others are ignored)."""
        if not isinstance(content, dict):
            return
        if kind == "stream":
            text, name = str(content.get("text", "")), str(content.get("name", ""))
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last.kind == "stream" and last.name == name:
                last.append(text)
            else:
                self._append(Output("stream", _kept(text), len(text), name))
        elif kind in ("execute_result", "display_data"):
            self._append(self._display(kind, content.get("data")))
        elif kind == "error":
            self.status = "error"
            lines = content.get("traceback")
            lines = [str(line) for line in lines[:MAX_TRACEBACK_LINES]] if isinstance(lines, list) else []
            text = "\n".join(lines)
            self._append(Output("error", _kept(text), len(text)))

    def _display(self, kind: str, data: Any) -> Output:
        data = data if isinstance(data, dict) else {}
        plain = str(data.get("text/plain", ""))
        output = Output(kind, _kept(plain), len(plain))
        png = data.get("image/png")
        if not isinstance(png, str):
            return output
        if len(png) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            output.image_note = f"a picture larger than {MAX_IMAGE_BYTES // 2**20} MiB was not kept"
        elif self.images >= MAX_IMAGES:
            output.image_note = f"at most {MAX_IMAGES} pictures of a cell are kept"
        else:
            output.png = png
        return output

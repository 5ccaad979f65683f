"""How a streamed reply appears in the terminal: Markdown, wrapped to the width, scrolling like any
program's output, and cheap on long replies.

Finished Markdown blocks (paragraphs, lists, fenced code) are printed once, for good; only the block
still being written is redrawn (at most 10 times a second), so a long reply costs no more per token
than a short one and is never cropped to one line. Piped output gets the plain text as it comes; on the
terminal, control characters are shown as visible escapes (visible.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.text import Text

from glm4_local.frontends.visible import visible


def split_finished(text: str) -> tuple[list[str], str]:
    """(finished Markdown blocks, the unfinished rest): a block ends at a blank line outside a code
    fence, or with the line that closes its fence."""
    blocks: list[str] = []
    *lines, partial = text.split("\n")
    block: list[str] = []
    in_fence = False
    for line in lines:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            block.append(line)
            if not in_fence:
                blocks.append("\n".join(block))
                block = []
            continue
        if not in_fence and not line.strip():
            if block:
                blocks.append("\n".join(block))
            block = []
            continue
        block.append(line)
    rest = "\n".join([*block, partial])
    return [b for b in blocks if b.strip()], rest


@contextlib.contextmanager
def keys_not_echoed(stream: TextIO | None) -> Iterator[None]:
    """While a reply is drawn, the terminal does not echo keys: an echoed ^C (or typed text) lands inside
    the region being redrawn, the terminal wraps a line the renderer does not know of, and clearing the
    region then leaves a stale copy of a line on screen. Typed keys still wait in the input."""
    try:
        import termios

        fd = stream.fileno() if stream is not None else -1
        saved = termios.tcgetattr(fd)
    except (ImportError, AttributeError, ValueError, OSError):  # no terminal (or not a POSIX one)
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _markdown(text: str) -> RenderableType:
    # imported when first needed: markdown-it and pygments are 45 ms of a start, and piped output never draws it
    from rich.markdown import Markdown

    return Markdown(text)


class _Unfinished:
    """The block being written, parsed as Markdown only when the display refreshes, not per token."""

    def __init__(self) -> None:
        self.text = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield _markdown(self.text)


class Thoughts:
    """A reasoning model's thoughts as they stream: dimmed, apart from the answer, a whole line at a time
    (printed above whatever live display is running: the spinner while the model reasons)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.line = ""

    def __call__(self, text: str) -> None:
        *lines, self.line = (self.line + visible(text)).split("\n")
        for line in lines:
            self.console.print(Text(line, style="dim"), soft_wrap=False)

    def end(self) -> None:
        if self.line.strip():
            self.console.print(Text(self.line, style="dim"))
        self.line = ""


class ReplyView:
    """Use as a context manager around one reply; `write` each streamed chunk."""

    def __init__(self, console: Console, plain: TextIO | None = None) -> None:
        self.console = console
        self.plain = plain  # piped output: plain text, no redrawing
        self.unfinished = _Unfinished()
        self.live: Live | None = None
        self.open_line = False  # plain output: the last chunk did not end its line
        self.quiet_keys = contextlib.ExitStack()

    def __enter__(self) -> ReplyView:
        if self.plain is None:
            _markdown("")  # imported now, not first by the display's refresh thread while the reply streams
            self.quiet_keys.enter_context(keys_not_echoed(sys.stdin))
            self.live = Live(self.unfinished, console=self.console, refresh_per_second=10, transient=True,
                             vertical_overflow="visible")
            self.live.start()
        return self

    def write(self, chunk: str) -> None:
        if self.plain is not None:
            if chunk:
                self.open_line = not chunk.endswith("\n")
            self.plain.write(chunk)
            self.plain.flush()
            return
        chunk = visible(chunk)  # the model's words: never a sequence the terminal acts on
        text = self.unfinished.text + chunk
        if "\n" not in chunk:  # a block can only end at a line break
            self.unfinished.text = text
            return
        finished, self.unfinished.text = split_finished(text)
        assert self.live is not None
        for block in finished:
            self.live.console.print(_markdown(block))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        """Print what is left for good (also after Ctrl-C: the partial reply stays on screen)."""
        if self.plain is not None:
            if self.open_line:
                self.plain.write("\n")
            self.plain.flush()
            return
        assert self.live is not None
        pending, self.unfinished.text = self.unfinished.text, ""
        try:
            self.live.refresh()
            self.live.stop()
        finally:
            self.quiet_keys.close()
        if pending.strip():
            self.console.print(_markdown(pending))

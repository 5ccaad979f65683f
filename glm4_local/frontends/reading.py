"""While the model reads a long prompt: a spinner, then, once it has taken a second, a bar with tokens,
tokens/s and the time left (the chat, and `chat -p` on stderr when that is a terminal)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

SHOW_AFTER_SECONDS = 1.0


class PromptReading:
    """Feed it (tokens read, tokens to read) after each prompt batch; use it as a context manager around
    the wait for the first words."""

    def __init__(self, console: Console, spinner_text: str | None) -> None:
        self.console = console
        self.spinner_text = spinner_text
        self.started = time.perf_counter()
        self._status: AbstractContextManager[object] | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> PromptReading:
        self.started = time.perf_counter()
        if self.spinner_text is not None:
            self._status = self.console.status(self.spinner_text, spinner="dots")
            self._status.__enter__()
        return self

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.started
        if self._bar is None:
            if elapsed < SHOW_AFTER_SECONDS or done >= total:
                return
            self._stop_status()
            self._bar = Progress(TextColumn("reading the prompt"), BarColumn(),
                                 TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=total, rate="")
        assert self._task is not None
        self._bar.update(self._task, completed=done, total=total, rate=f"{done / max(elapsed, 1e-6):,.0f} tok/s")
        self._bar.refresh()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.__exit__(None, None, None)
            self._status = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop_status()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

"""A rich progress bar (bytes and tensors) for conversions, shown only on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from glm4_local.core.progress import Progress as ProgressReport


class RichProgress(ProgressReport):
    """core.progress.Progress as a rich bar per phase."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TextColumn("{task.fields[tensors]}"), TimeRemainingColumn(), console=console, transient=False,
        )
        self._task: TaskID | None = None
        self._tensors_total = 0
        self._tensors_done = 0

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, phase: str, total_bytes: int, total_tensors: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total)
        self._tensors_total, self._tensors_done = total_tensors, 0
        self._task = self._progress.add_task(phase, total=total_bytes or None, tensors=self._tensor_text())

    def _tensor_text(self) -> str:
        return f"{self._tensors_done}/{self._tensors_total} tensors" if self._tensors_total else ""

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def tensor_done(self) -> None:
        self._tensors_done += 1
        if self._task is not None:
            # drawn now, not at the next tick: every finished tensor is visible progress, even when fast
            self._progress.update(self._task, tensors=self._tensor_text(), refresh=True)

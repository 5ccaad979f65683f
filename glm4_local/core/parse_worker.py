"""The parsers of untrusted files and pages (filetext.py), run in bounded child processes (worker.py):
PDF pages, a DOCX's text, an HTML page's main text. `parse` is what callers use; a parser that runs past
its deadline or out of memory is stopped, and the caller gets a FileTextError naming the file."""

from __future__ import annotations

from typing import Any

from glm4_local.core import filetext
from glm4_local.core.filetext import FileTextError
from glm4_local.core.worker import WorkerFailure, WorkerPool, serve

JOBS = {"pdf_pages": filetext.pdf_pages, "docx_text": filetext.docx_text, "html_markdown": filetext.html_markdown}
TIMEOUT = 60.0  # a document's default: a large PDF takes seconds
MEMORY_BYTES = 2 * 1024**3
WORKERS = 2
_pool: WorkerPool | None = None


def _workers() -> WorkerPool:
    global _pool
    if _pool is None:
        _pool = WorkerPool(__name__, WORKERS, TIMEOUT, MEMORY_BYTES)
    return _pool


def parse(job: str, name: str, timeout: float | None = None, **args: Any) -> Any:
    """JOBS[job](**args) in a worker; `name` is what a failure calls the file or page."""
    try:
        return _workers().call(job, args, timeout)
    except WorkerFailure as e:
        if e.kind == "timeout":
            raise FileTextError(f"{name}: reading it took too long ({e})") from None
        if e.kind == "crashed":
            raise FileTextError(f"{name}: reading it {e}") from None
        raise FileTextError(str(e)) from None


if __name__ == "__main__":
    serve(JOBS, failures=(FileTextError,))

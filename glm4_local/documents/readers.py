"""A file into text for the model, by its type: text and code (encoding detected), Markdown, HTML (its
main text), PDF (page markers kept), DOCX (paragraphs and tables). An unreadable, encrypted or binary
file is one DocumentError naming it and why; nothing is guessed into garbage.

Only regular files are read (a FIFO or a device is refused without waiting on it), each bounded by what
it expands to, and the parsers run in a bounded child process (core/parse_worker.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from glm4_local.core import filetext
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.parse_worker import parse
from glm4_local.documents.form import Document

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TEXT_BYTES = 64 * 1024 * 1024  # a text file: more than any context holds
MAX_HTML_BYTES = 16 * 1024 * 1024
EXTRA = "documents"
INSTALL = f'pip install "glm4-local[{EXTRA}]"'


class DocumentError(Glm4LocalError):
    """A file that cannot be read into the conversation."""


@contextlib.contextmanager
def _as_document_error() -> Iterator[None]:
    """The file-text layer's failures (which name the file and why) as this layer's."""
    try:
        yield
    except filetext.FileTextError as e:
        raise DocumentError(str(e)) from None


def decode_text(data: bytes, path: Path) -> str:
    with _as_document_error():
        return filetext.decode_text(data, path.name)


def _read(path: Path, limit: int) -> bytes:
    with _as_document_error():
        return filetext.read_regular(path, limit)


def read_text(path: Path) -> Document:
    return Document(path.name, decode_text(_read(path, MAX_TEXT_BYTES), path), "text")


def _parsed(job: str, file: Path, **args: object) -> object:
    with _as_document_error():
        return parse(job, file.name, **args)


def read_html(path: Path) -> Document:
    html = decode_text(_read(path, MAX_HTML_BYTES), path)
    text = _parsed("html_markdown", path, html=html, url="", reading="document", install_hint=INSTALL)
    return Document(path.name, str(text), "html")


def read_pdf(path: Path) -> Document:
    pages = _parsed("pdf_pages", path, path=str(path), install_hint=INSTALL)
    assert isinstance(pages, list)
    if not any(p.strip() for p in pages):
        raise DocumentError(f"{path.name}: the PDF has no text (scanned pages need OCR first)")
    return Document(path.name, filetext.with_page_markers(pages), "pdf", len(pages))


def read_docx(path: Path) -> Document:
    return Document(path.name, str(_parsed("docx_text", path, path=str(path), install_hint=INSTALL)), "docx")


# file suffix -> reader; anything else is read as text (code, logs, CSV ...) unless it is binary
READERS: dict[str, Callable[[Path], Document]] = {
    ".html": read_html, ".htm": read_html, ".xhtml": read_html,
    ".pdf": read_pdf,
    ".docx": read_docx,
}


def read_document(path: Path) -> Document:
    """The file's text, as the model will read it."""
    try:
        if not path.is_file():
            raise DocumentError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DocumentError(f"{path.name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        document = READERS.get(path.suffix.lower(), read_text)(path)
    except OSError as e:
        raise DocumentError(f"{path}: cannot read ({e.strerror})") from None
    if not document.text.strip():
        raise DocumentError(f"{path.name}: no text in it")
    return document

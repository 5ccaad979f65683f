"""A file into text for the model, by its type: text and code (encoding detected), Markdown, HTML (its
main text), PDF (page markers kept), DOCX (paragraphs and tables). An unreadable, encrypted or binary
file is one DocumentError naming it and why; nothing is guessed into garbage."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from glm4_local.core import filetext
from glm4_local.core.errors import Glm4LocalError
from glm4_local.documents.form import Document

MAX_FILE_BYTES = 256 * 1024 * 1024
EXTRA = "documents"


class DocumentError(Glm4LocalError):
    """A file that cannot be read into the conversation."""


def _needs(path: Path, what: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DocumentError(f"{path.name}: {what} needs {module}: pip install \"glm4-local[{EXTRA}]\"")


def decode_text(data: bytes, path: Path) -> str:
    try:
        return filetext.decode_text(data, path.name)
    except filetext.FileTextError as e:
        raise DocumentError(str(e)) from None


def read_text(path: Path) -> Document:
    return Document(path.name, decode_text(path.read_bytes(), path), "text")


def read_html(path: Path) -> Document:
    _needs(path, "HTML", "trafilatura")
    import trafilatura

    html = decode_text(path.read_bytes(), path)
    text = trafilatura.extract(html, output_format="markdown", include_links=False, include_tables=True,
                               favor_recall=True) or trafilatura.html2txt(html) or ""
    return Document(path.name, text, "html")


def read_pdf(path: Path) -> Document:
    try:
        pages = filetext.pdf_pages(path, f'pip install "glm4-local[{EXTRA}]"')
    except filetext.FileTextError as e:
        raise DocumentError(str(e)) from None
    if not any(p.strip() for p in pages):
        raise DocumentError(f"{path.name}: the PDF has no text (scanned pages need OCR first)")
    return Document(path.name, filetext.with_page_markers(pages), "pdf", len(pages))


def read_docx(path: Path) -> Document:
    _needs(path, "DOCX", "docx")
    import zipfile

    import docx
    from docx.opc.exceptions import OpcError

    try:
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError, OpcError) as e:
        raise DocumentError(f"{path.name}: not a readable DOCX file ({e})") from None
    blocks = [p.text for p in document.paragraphs if p.text.strip()]
    for table in document.tables:
        blocks.append("\n".join(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows))
    return Document(path.name, "\n\n".join(blocks), "docx")


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

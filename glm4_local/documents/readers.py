"""A file into text for the model, by its type: text and code (encoding detected), Markdown, HTML (its
main text), PDF (page markers kept), DOCX (paragraphs and tables). An unreadable, encrypted or binary
file is one DocumentError naming it and why; nothing is guessed into garbage."""

from __future__ import annotations

import codecs
import importlib.util
from collections.abc import Callable
from pathlib import Path

from glm4_local.core.errors import Glm4LocalError
from glm4_local.documents.form import Document

MAX_FILE_BYTES = 256 * 1024 * 1024
EXTRA = "documents"
PREFERRED = ("gb18030", "big5", "cp1252", "cp1251", "shift_jis", "euc_kr")  # Chinese first, then Western
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class DocumentError(Glm4LocalError):
    """A file that cannot be read into the conversation."""


def _needs(path: Path, what: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DocumentError(f"{path.name}: {what} needs {module}: pip install \"glm4-local[{EXTRA}]\"")


def decode_text(data: bytes, path: Path) -> str:
    """Text in whatever encoding it came in: a byte-order mark, else UTF-8, else what charset_normalizer
    finds; a file with NUL bytes and no UTF-16/32 mark is binary."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    if b"\0" in data[:8192]:
        raise DocumentError(f"{path.name}: a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if importlib.util.find_spec("charset_normalizer") is not None:
        from charset_normalizer import from_bytes

        matches = list(from_bytes(data))
        if matches:
            # a short text often fits several encodings equally well: then the likelier for our users
            least = min(m.chaos for m in matches)
            tied = {m.encoding: m for m in matches if m.chaos <= least + 0.01}
            chosen = next((tied[e] for e in PREFERRED if e in tied), min(matches, key=lambda m: m.chaos))
            return str(chosen)
    return data.decode("gb18030", errors="replace")  # the common encoding of Chinese text that is not UTF-8


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
    _needs(path, "PDF", "pypdf")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(f"{path.name}: an encrypted PDF (remove the password first)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise DocumentError(f"{path.name}: not a readable PDF ({e})") from None
    if not any(p.strip() for p in pages):
        raise DocumentError(f"{path.name}: the PDF has no text (scanned pages need OCR first)")
    text = "\n\n".join(f"[Page {i}]\n{page.strip()}" for i, page in enumerate(pages, 1))
    return Document(path.name, text, "pdf", len(pages))


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

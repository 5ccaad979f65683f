"""The text of a file or a page, for the model: decoded in whatever encoding it came in, a PDF's pages with
their markers, a DOCX's paragraphs and tables, an HTML page's main text. Shared by the document readers
(`chat --file`, the page's Attach), the browser's folder backend and its web pages. Each failure is a
FileTextError that names the file and why.

Files may be hostile: only regular files are opened (never blocking on a FIFO or a device), and each
format is bounded by what it expands to before it is parsed: a DOCX by its uncompressed XML, a PDF by
its pages and its text. The parsers (pypdf, python-docx, trafilatura) run in a bounded child process
(parse_worker.py): whatever their input costs them, the caller waits at most its deadline.
"""

from __future__ import annotations

import codecs
import importlib.util
import io
import os
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

from glm4_local.core.errors import Glm4LocalError

PREFERRED = ("gb18030", "big5", "cp1252", "cp1251", "shift_jis", "euc_kr")  # Chinese first, then Western
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
MAX_PDF_PAGES = 2_000
MAX_TEXT_CHARS = 16 * 1024 * 1024  # more than the largest context holds (a million tokens are ~4M characters)
MAX_DOCX_XML_BYTES = 32 * 1024 * 1024  # uncompressed: what python-docx parses into a tree
MAX_DOCX_BYTES = 256 * 1024 * 1024  # uncompressed, pictures and all: what python-docx holds in memory


class FileTextError(Glm4LocalError):
    """A file whose text cannot be had (binary, encrypted, damaged, a reader missing)."""


def open_regular(path: Path, follow_links: bool = True) -> BinaryIO:
    """The file, open for reading, if it is a regular file: a FIFO or a device is refused without
    waiting on it; with `follow_links` off, a symbolic link is refused too."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= 0 if follow_links else getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileTextError(f"{path.name}: not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: Path, limit: int, follow_links: bool = True) -> bytes:
    """All of a regular file of at most `limit` bytes."""
    with open_regular(path, follow_links) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise FileTextError(f"{path.name}: larger than {limit / 2**20:g} MiB")
        return file.read(limit + 1)[:limit]


def decode_text(data: bytes, name: str) -> str:
    """Text in whatever encoding it came in: a byte-order mark, else UTF-8, else what charset_normalizer
    finds; a file with NUL bytes and no UTF-16/32 mark is binary."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    if b"\0" in data[:8192]:
        raise FileTextError(f"{name}: a binary file, not text")
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


def _need(module: str, what: str, name: str, install_hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise FileTextError(f"{name}: reading {what} needs {module}: {install_hint}")


def _bounded_text(parts: list[str], name: str) -> None:
    if sum(map(len, parts)) > MAX_TEXT_CHARS:
        raise FileTextError(f"{name}: its text is longer than {MAX_TEXT_CHARS:,} characters (more than any "
                            "context holds); split it")


def pdf_pages(path: str, install_hint: str) -> list[str]:
    """A PDF's pages' text (pypdf), at most MAX_PDF_PAGES pages."""
    name = Path(path).name
    _need("pypdf", "PDF files", name, install_hint)
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        with open_regular(Path(path)) as file:
            reader = PdfReader(io.BytesIO(file.read()))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileTextError(f"{name}: an encrypted PDF (remove the password first)")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise FileTextError(f"{name}: more than {MAX_PDF_PAGES:,} pages ({len(reader.pages):,}); split it")
        pages: list[str] = []
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            _bounded_text(pages, name)
        return pages
    except FileTextError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:  # what pypdf raises for damage
        raise FileTextError(f"{name}: not a readable PDF ({e})") from None


def with_page_markers(pages: list[str]) -> str:
    return "\n\n".join(f"[Page {i}]\n{page.strip()}" for i, page in enumerate(pages, 1))


def _check_docx_size(file: BinaryIO, name: str) -> None:
    """What the archive expands to, from its own directory (zipfile never reads past a member's declared
    size), before python-docx reads any of it."""
    try:
        members = zipfile.ZipFile(file).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise FileTextError(f"{name}: not a readable DOCX file ({e})") from None
    xml = sum(m.file_size for m in members if m.filename.endswith((".xml", ".rels")))
    total = sum(m.file_size for m in members)
    if xml > MAX_DOCX_XML_BYTES or total > MAX_DOCX_BYTES:
        raise FileTextError(f"{name}: expands to {total / 2**20:,.0f} MiB ({xml / 2**20:,.0f} MiB of XML), more "
                            f"than {MAX_DOCX_BYTES / 2**20:g} MiB ({MAX_DOCX_XML_BYTES / 2**20:g} MiB of XML) "
                            "a DOCX may")
    file.seek(0)


def docx_text(path: str, install_hint: str) -> str:
    """A DOCX's paragraphs, then its tables as `a | b` rows (python-docx)."""
    name = Path(path).name
    _need("docx", "DOCX files", name, install_hint)
    import docx
    from docx.opc.exceptions import OpcError
    from lxml import etree

    with open_regular(Path(path)) as file:
        data = io.BytesIO(file.read())
    _check_docx_size(data, name)
    try:
        document = docx.Document(data)
        blocks = [p.text for p in document.paragraphs if p.text.strip()]
        for table in document.tables:
            blocks.append("\n".join(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows))
    except (zipfile.BadZipFile, KeyError, ValueError, OpcError, etree.LxmlError) as e:
        raise FileTextError(f"{name}: not a readable DOCX file ({e})") from None
    _bounded_text(blocks, name)
    return "\n\n".join(blocks)


# how trafilatura reads a web page for the browser (links and images kept, to be numbered) and an HTML
# document for the conversation (its text)
HTML_READINGS = {
    "page": {"include_links": True, "include_images": True, "include_tables": True, "include_comments": False,
             "favor_recall": True, "deduplicate": False},
    "document": {"include_links": False, "include_tables": True, "favor_recall": True},
}


def html_markdown(html: str, url: str, reading: str, install_hint: str) -> str:
    """An HTML page's main text as Markdown (trafilatura drops navigation and link-dense boilerplate), read
    as HTML_READINGS[reading] says; all its text when the page is too small or odd for that."""
    _need("trafilatura", "HTML", url.rsplit("/", 1)[-1] or url or "the page", install_hint)
    import trafilatura

    text = trafilatura.extract(html, url=url or None, output_format="markdown", **HTML_READINGS[reading])
    return text or trafilatura.html2txt(html) or ""

"""The text of a file, for the model: decoded in whatever encoding it came in, or a PDF's pages with their
markers. Shared by the document readers (`chat --file`) and the browser's folder backend. Each failure is
a FileTextError that names the file and why."""

from __future__ import annotations

import codecs
import importlib.util
from pathlib import Path

from glm4_local.core.errors import Glm4LocalError

PREFERRED = ("gb18030", "big5", "cp1252", "cp1251", "shift_jis", "euc_kr")  # Chinese first, then Western
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class FileTextError(Glm4LocalError):
    """A file whose text cannot be had (binary, encrypted, damaged, a reader missing)."""


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


def pdf_pages(path: Path, install_hint: str) -> list[str]:
    """A PDF's pages' text (pypdf); `install_hint` says how to get pypdf when it is missing."""
    if importlib.util.find_spec("pypdf") is None:
        raise FileTextError(f"{path.name}: reading PDF files needs pypdf: {install_hint}")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileTextError(f"{path.name}: an encrypted PDF (remove the password first)")
        return [page.extract_text() or "" for page in reader.pages]
    except FileTextError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:  # what pypdf raises for damage
        raise FileTextError(f"{path.name}: not a readable PDF ({e})") from None


def with_page_markers(pages: list[str]) -> str:
    return "\n\n".join(f"[Page {i}]\n{page.strip()}" for i, page in enumerate(pages, 1))

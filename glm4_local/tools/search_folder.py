"""A folder of the user's files as an offline search engine: Markdown, text, HTML and PDF, indexed with
SQLite FTS5 (only new or changed files are read again), pages at `folder://{name}/{relative path}`.

Chinese, Japanese and Korean text has no spaces between words, so each such character is indexed as
a word of its own and a query's run of them is searched as a phrase.

Only regular files are read (a FIFO named `*.md` is passed over, never waited on), pages are held to the
web's 5 MiB, and an index that is damaged is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import stat
import time
from pathlib import Path
from urllib.parse import quote, unquote

from glm4_local.core import filetext
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.parse_worker import parse
from glm4_local.tools.extras import install_line
from glm4_local.tools.fetch import MAX_BYTES as MAX_PAGE_BYTES
from glm4_local.tools.page_text import Page, html_title, page_from_html, page_from_markdown, plain_text
from glm4_local.tools.search import RESULTS, Result, SearchError

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf"}
MAX_FILE_BYTES = 32 * 1024 * 1024
CJK_CHARS = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
CJK = re.compile(f"([{CJK_CHARS}])")
CJK_GAP = re.compile(f"(?<=[{CJK_CHARS}]) | (?=[{CJK_CHARS}])")
WORD = re.compile(r"\w+")
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, mtime REAL, size INTEGER, doc INTEGER);
CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(title, body, tokenize='unicode61');
"""


def spaced(text: str) -> str:
    return CJK.sub(r" \1 ", text)


def unspaced(text: str) -> str:
    return CJK_GAP.sub("", " ".join(text.split()))


def match_query(query: str) -> str:
    """The user's words as FTS5 phrases (never FTS5 syntax: quotes, operators are just text)."""
    return " ".join(f'"{word}"' for word in WORD.findall(spaced(query)) if word)


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    try:
        return filetext.decode_text(filetext.read_regular(path, limit), path.name)
    except filetext.FileTextError as e:
        raise SearchError(str(e)) from None


def read_pdf(path: Path) -> str:
    try:
        pages = parse("pdf_pages", path.name, path=str(path), install_hint=install_line("browser"))
    except filetext.FileTextError as e:
        raise SearchError(str(e)) from None
    return filetext.with_page_markers(pages)


class FolderBackend:
    def __init__(self, folder: Path, index_dir: Path) -> None:
        if not folder.is_dir():
            raise Glm4LocalError(f"{folder}: not a folder")
        self.folder = folder.resolve()
        self.name = re.sub(r"[^A-Za-z0-9-]+", "-", self.folder.name).strip("-").lower() or "folder"
        self.prefix = f"folder://{self.name}/"
        index_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
        self.index = index_dir / f"folder-{digest}.sqlite"
        try:
            self.indexed = self._open_index()
        except sqlite3.DatabaseError:  # damaged (or not an index at all): built again from the files
            with contextlib.suppress(sqlite3.Error, AttributeError):
                self.db.close()
            for stale in (self.index, self.index.with_name(self.index.name + "-journal")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            self.indexed = self._open_index()
        self.label = f"folder {self.folder} ({self.indexed:,} files)"

    def _open_index(self) -> int:
        self.db = sqlite3.connect(self.index, check_same_thread=False)
        self.db.executescript(SCHEMA)
        return self.update()

    def _files(self) -> dict[str, os.stat_result]:
        found = {}
        for root, dirs, names in os.walk(self.folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                path = Path(root, name)
                if path.suffix.lower() in SUFFIXES and not name.startswith("."):
                    try:
                        if path.is_symlink() and not path.resolve().is_relative_to(self.folder):
                            continue  # what the pages may show is the folder's own files, as open() holds
                        info = path.stat()
                    except (OSError, RuntimeError):  # a link loop
                        continue
                    if stat.S_ISREG(info.st_mode):  # never a FIFO or a device: reading one would wait for ever
                        found[str(path.relative_to(self.folder))] = info
        return found

    def _document(self, relative: str) -> tuple[str, str]:
        path = self.folder / relative
        suffix = path.suffix.lower()
        if suffix == ".pdf":
            return path.stem, read_pdf(path)
        text = read_text(path)
        if suffix in HTML_SUFFIXES:
            return html_title(text) or path.stem, plain_text(text)
        first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.strip()), "")
        return (first[:120] if suffix in {".md", ".markdown"} and first else path.stem), text

    def update(self) -> int:
        """Index new and changed files, forget removed ones; the number of files indexed."""
        on_disk = self._files()
        known = {p: (m, s, d) for p, m, s, d in self.db.execute("SELECT path, mtime, size, doc FROM files")}
        with self.db:
            for relative in known.keys() - on_disk.keys():
                self.db.execute("DELETE FROM docs WHERE rowid = ?", (known[relative][2],))
                self.db.execute("DELETE FROM files WHERE path = ?", (relative,))
            for relative, stat in on_disk.items():
                seen = known.get(relative)
                if seen and seen[0] == stat.st_mtime and seen[1] == stat.st_size:
                    continue
                if seen:
                    self.db.execute("DELETE FROM docs WHERE rowid = ?", (seen[2],))
                title, body = ("", "") if stat.st_size > MAX_FILE_BYTES else self._safe_document(relative)
                doc = self.db.execute("INSERT INTO docs (title, body) VALUES (?, ?)",
                                      (spaced(title), spaced(body))).lastrowid
                self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                (relative, stat.st_mtime, stat.st_size, doc))
        return len(on_disk)

    def _safe_document(self, relative: str) -> tuple[str, str]:
        try:
            return self._document(relative)
        except (OSError, SearchError, filetext.FileTextError):
            return Path(relative).stem, ""

    def search(self, query: str, recency_days: int | None) -> list[Result]:
        phrases = match_query(query)
        if not phrases:
            return []
        since = time.time() - recency_days * 86400 if recency_days and recency_days > 0 else 0
        sql = ("SELECT files.path, docs.title, snippet(docs, 1, '', '', '…', 32) FROM docs "
               "JOIN files ON files.doc = docs.rowid WHERE docs MATCH ? AND files.mtime >= ? "
               "ORDER BY bm25(docs, 5.0, 1.0) LIMIT ?")
        try:
            rows = self.db.execute(sql, (phrases, since, RESULTS)).fetchall()
            if not rows and " " in phrases:  # no file has every word: any of them
                rows = self.db.execute(sql, (phrases.replace('" "', '" OR "'), since, RESULTS)).fetchall()
        except sqlite3.Error as e:
            raise SearchError(f"the folder index failed: {e}") from None
        return [Result(unspaced(title), self.prefix + quote(path), unspaced(snippet)) for path, title, snippet in rows]

    def open(self, url: str) -> Page | None:
        if not url.startswith(self.prefix):
            return None
        relative = unquote(url[len(self.prefix):].split("#")[0])
        missing = SearchError(f"no file {relative!r} in {self.folder.name}")
        if "\0" in relative:
            raise missing
        try:
            path = (self.folder / relative).resolve()
            if not path.is_relative_to(self.folder) or path.suffix.lower() not in SUFFIXES or not path.is_file():
                raise missing  # never a file outside the folder
        except (OSError, RuntimeError, ValueError):
            raise missing from None
        address = self.prefix + quote(str(path.relative_to(self.folder)))
        if path.suffix.lower() == ".pdf":
            return page_from_markdown(read_pdf(path), address, path.stem)
        text = read_text(path, MAX_PAGE_BYTES)
        if path.suffix.lower() in HTML_SUFFIXES:
            return page_from_html(text, address)
        return page_from_markdown(text, address, self._document(str(path.relative_to(self.folder)))[0])


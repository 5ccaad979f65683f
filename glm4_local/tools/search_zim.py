"""A Kiwix ZIM archive as an offline search engine and web: its full-text index (else its title
suggestions) for `search`, its HTML entries for `mclick`/`open_url`, at addresses `zim://{name}/{path}`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.extras import needs
from glm4_local.tools.fetch import MAX_BYTES as MAX_PAGE_BYTES
from glm4_local.tools.page_text import Page, page_from_html, page_from_markdown, plain_text
from glm4_local.tools.search import RESULTS, Result, SearchError

SNIPPET_CHARS = 200
SNIPPET_SOURCE_BYTES = 64 * 1024  # a result's snippet is read from the start of its page only


def plain_snippet(html: str) -> str:
    return plain_text(html)[:SNIPPET_CHARS]


class ZimBackend:
    def __init__(self, path: Path) -> None:
        try:
            from libzim.reader import Archive
        except ImportError:
            raise Glm4LocalError(needs("ZIM files", "browser", "libzim")) from None
        try:
            self.archive: Any = Archive(str(path))
        except (RuntimeError, OSError) as e:
            raise Glm4LocalError(f"{path}: not a readable ZIM file ({e})") from None
        self.name = re.sub(r"[^A-Za-z0-9-]+", "-", path.stem).strip("-").lower() or "zim"
        self.prefix = f"zim://{self.name}/"
        self.label = f"ZIM {path.name} ({self.archive.entry_count:,} entries)"

    def _paths(self, query: str) -> list[str]:
        if self.archive.has_fulltext_index:
            from libzim.search import Query, Searcher

            found = Searcher(self.archive).search(Query().set_query(query))
            return list(found.getResults(0, RESULTS))
        from libzim.suggestion import SuggestionSearcher

        return list(SuggestionSearcher(self.archive).suggest(query).getResults(0, RESULTS))

    def search(self, query: str, recency_days: int | None) -> list[Result]:
        try:
            paths = self._paths(query)
        except RuntimeError as e:
            raise SearchError(f"the ZIM search failed: {e}") from None
        results = []
        for path in paths:
            entry = self._entry(path)
            if entry is None:
                continue
            item = entry.get_item()
            html = bytes(memoryview(item.content)[:SNIPPET_SOURCE_BYTES]).decode("utf-8", errors="replace")
            results.append(Result(entry.title, self.prefix + entry.path, plain_snippet(html)))
        return results

    def _entry(self, path: str) -> Any:
        try:
            entry = self.archive.get_entry_by_path(path)
        except (KeyError, RuntimeError, ValueError, UnicodeError):  # no such entry, or a path libzim refuses
            return None
        for _ in range(8):  # redirects, bounded
            if not entry.is_redirect:
                return entry
            entry = entry.get_redirect_entry()
        return None

    def open(self, url: str) -> Page | None:
        if not url.startswith(self.prefix):
            return None
        path = url[len(self.prefix):].split("#")[0]
        entry = self._entry(path)
        if entry is None:
            raise SearchError(f"no entry {path!r} in the ZIM file")
        item = entry.get_item()
        if item.size > MAX_PAGE_BYTES:
            raise SearchError(f"{path!r} is larger than {MAX_PAGE_BYTES // 2**20} MiB")
        text = bytes(item.content).decode("utf-8", errors="replace")
        if item.mimetype.startswith("text/html"):
            page = page_from_html(text, self.prefix + entry.path)
            page.title = entry.title or page.title
            return page
        if item.mimetype.startswith("text/"):
            return page_from_markdown(text, self.prefix + entry.path, entry.title)
        raise SearchError(f"{path!r} is not a text page ({item.mimetype})")

"""Search backends for `simple_browser`, chosen by the user: `searxng:URL` (a SearXNG instance's JSON
API), `ddg` (DuckDuckGo through the ddgs package), and two that need no network at all: `zim:FILE`
(a Kiwix ZIM archive: offline Wikipedia, Stack Exchange, docs) and `folder:DIR` (Markdown, text, HTML
and PDF files, indexed with SQLite FTS5). Offline backends also open their own pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from glm4_local.tools.page_text import Page

RESULTS = 10  # what Bing gave the demo


class SearchError(Exception):
    """The backend did not answer (one line, for the model's error observation)."""


@dataclass(frozen=True)
class Result:
    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    label: str  # for the banner and /tools

    def search(self, query: str, recency_days: int | None) -> list[Result]: ...

    def open(self, url: str) -> Page | None:
        """A page of this backend's own (a ZIM entry, a file); None for a web address."""

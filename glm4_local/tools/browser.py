"""GLM-4's `simple_browser`: search, mclick and open_url over a search backend and the web, with the
observations byte for byte as THUDM's demo writes them (../shared/glm4-reference/ALL_TOOLS.md).

State per conversation: a stack of pages (mclick's ids are the last page's links) and a quote counter
that starts at 7; every page opened by mclick is a quote the final answer cites as 【{n}†{text}】.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from glm4_local.core.words import counted
from glm4_local.tools.browser_actions import Action, ActionError, parse_action
from glm4_local.tools.fetch import TIMEOUT, FetchError, fetch
from glm4_local.tools.observation import BROWSER_RESULT, Observation, Source
from glm4_local.tools.page_text import (
    PAGE_SECONDS,
    Page,
    PageError,
    hostname,
    join_url,
    page_from_html,
    page_from_markdown,
)
from glm4_local.tools.search import SearchBackend, SearchError

FIRST_QUOTE = 7
VISIBLE = "\nVisible: 0% - 100%"
MAX_CLICKS = 10
OPEN_SECONDS = PAGE_SECONDS  # a whole open: at most TIMEOUT (10 s) fetching, the rest turning it into text


@dataclass
class PageState:
    url: str
    links: list[str] = field(default_factory=list)
    sources: dict[int, Source] = field(default_factory=dict)  # a search page's results, for citations


@dataclass(frozen=True)
class _Failure:
    content: str  # the demo's text for the model
    reason: str  # why, for the user


def _short(url: str, limit: int = 80) -> str:
    return url if len(url) <= limit else url[:limit] + f"... (URL truncated at {limit} chars)"


def _load_failure(error: Exception, shown_url: str) -> str:
    """The demo's words for a page that could not be had."""
    what = "Timeout while loading" if "timed out" in str(error) or "took too long" in str(error) else "Failed to load"
    return f"{what} page w/ URL: {shown_url}"


def _click_failure(ref: object, permanent: str, feedback: str) -> str:
    return (f"recorded='click({ref})' temporary=None permanent={permanent} new_state=None final=None "
            f"success=False feedback='{feedback}' metadata={{}}")


class Browser:
    def __init__(self, backend: SearchBackend, allow_private: bool = False) -> None:
        self.backend = backend
        self.allow_private = allow_private
        self.pages: list[PageState] = []
        self.quote_counter = FIRST_QUOTE
        self.quotes: dict[int, Source] = {}

    def describe(self) -> str:
        web = "local addresses allowed" if self.allow_private else "no local or private addresses"
        return f"simple_browser (search: {self.backend.label}; pages: {web})"

    def run(self, name: str, payload: str) -> Sequence[Observation]:
        observations: list[Observation] = []
        for line in payload.split("\n"):
            if not line.strip():
                continue
            try:
                observations += self._act(parse_action(line))
            except ActionError as e:
                observations.append(Observation("system_error", f"Error when executing command {line}\nError: {e}",
                                                f"{line.strip()}: {e.detail or e}"))
        return observations

    def _act(self, action: Action) -> list[Observation]:
        if action.name == "search":
            return [self._search(action.query, action.recency_days)]
        if action.name == "open_url":
            return [self._open_url(action.url)]
        return self._mclick(action.ids)

    def _search(self, query: str, recency_days: int | None) -> Observation:
        try:
            results = self.backend.search(query, recency_days)
        except SearchError as e:
            raise ActionError(str(e)) from None
        state = PageState("about:blank")
        lines = []
        for i, result in enumerate(results):
            lines += [f" # 【{i}†{result.title}†{hostname(result.url)}】", result.snippet]
            state.links.append(result.url)
            state.sources[i] = Source(result.title, result.url)
        self.pages.append(state)
        return Observation(BROWSER_RESULT, "\n".join(lines) + VISIBLE,
                           f'search "{query}": {counted(len(results), "result")}')

    def _page(self, url: str) -> Page:
        """The page at `url`: the backend's own, or fetched from the web; within OPEN_SECONDS in all."""
        deadline = time.monotonic() + OPEN_SECONDS
        try:
            own = self.backend.open(url)
        except SearchError as e:
            raise FetchError(str(e)) from None
        if own is not None:
            return own
        fetched = fetch(url, allow_private=self.allow_private, timeout=TIMEOUT)
        if fetched.content_type.startswith(("text/plain", "text/markdown")):
            return page_from_markdown(fetched.text(), fetched.url, "")
        return page_from_html(fetched.text(), fetched.url, max(deadline - time.monotonic(), 1.0))

    def _open_url(self, url: str) -> Observation:
        try:
            page = self._page(url)
        except (FetchError, PageError) as e:
            raise ActionError(_load_failure(e, url), f"{url}: {e}") from None
        self.pages.append(PageState(page.url, page.links))
        body = re.sub(r"\n[ \t]*(?=\n[ \t]*\n)", "", page.markdown)  # runs of empty lines become one
        title = f"TITLE: {page.title}\n\n" if page.title else ""
        return Observation(BROWSER_RESULT, f"{title}\nURL: {url}\n{body}{VISIBLE}",
                           f"opened {page.title or url} — {url}", source=Source(page.title or url, page.url))

    def _mclick(self, ids: tuple[object, ...]) -> list[Observation]:
        if not self.pages:
            raise ActionError("No page state")
        state = self.pages[-1]
        planned: list[tuple[int, str, int] | _Failure] = []
        for ref in ids[:MAX_CLICKS]:
            if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(state.links):
                planned.append(_Failure(_click_failure(ref, "None", f"Error parsing ID {ref}"), "no such link"))
                continue
            planned.append((ref, join_url(state.url, state.links[ref]), self.quote_counter))
            self.quote_counter += 1
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        try:
            done = [p if isinstance(p, _Failure) else pool.submit(self._quote, *p) for p in planned]
            results = [d if isinstance(d, _Failure) else d.result() for d in done]
        finally:  # Ctrl-C returns at once; fetches still running end by their own deadline
            pool.shutdown(wait=False, cancel_futures=True)
        if all(isinstance(r, _Failure) for r in results):
            failures = [r for r in results if isinstance(r, _Failure)]
            raise ActionError("\n".join(f.content for f in failures), "; ".join(f.reason for f in failures))
        return [r if isinstance(r, Observation) else Observation("system_error", r.content, r.reason) for r in results]

    def _quote(self, ref: int, url: str, quote: int) -> Observation | _Failure:
        try:
            page = self._page(url)
        except (FetchError, PageError) as e:
            content = _click_failure(ref, f"'{_load_failure(e, _short(url))}'", f"Error fetching url {_short(url)}")
            return _Failure(content, f"{url}: {e}")
        source = Source(page.title or url, page.url)
        self.quotes[quote] = source
        text = re.sub(r"[\r\n]+", "\n", page.markdown)
        return Observation(f"quote_result [{quote}†source]", text, f"[{quote}] {source.title} — {source.url}",
                           source=source)

    def source(self, ref: str) -> Source | None:
        """What a citation 【ref†...】 in the final answer points to: a quote, else a search result."""
        if not ref.strip().isdigit():
            return None
        n = int(ref)
        if n in self.quotes:
            return self.quotes[n]
        search = next((p for p in reversed(self.pages) if p.sources), None)
        return search.sources.get(n) if search else None

    def interrupt(self) -> None:
        """Fetches end by their own deadline (10 s); an interrupted call's results are dropped."""

    def close(self) -> None:
        self.pages.clear()

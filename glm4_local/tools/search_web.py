"""Web search backends: a SearXNG instance (its JSON API; often the user's own, so its address may be
local) and DuckDuckGo through the `ddgs` package (no key)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from glm4_local.tools.extras import needs, require
from glm4_local.tools.fetch import FetchError, fetch
from glm4_local.tools.page_text import Page
from glm4_local.tools.search import RESULTS, Result, SearchError

SEARXNG_RANGES = ((1, "day"), (7, "week"), (31, "month"), (366, "year"))
DDG_LIMITS = ((1, "d"), (7, "w"), (31, "m"), (366, "y"))


def _bucket(days: int | None, buckets: tuple[tuple[int, str], ...]) -> str | None:
    if not days or days <= 0:
        return None
    return next((name for limit, name in buckets if days <= limit), None)


class SearxngBackend:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.label = f"SearXNG at {self.base_url}"

    def search(self, query: str, recency_days: int | None) -> list[Result]:
        params = {"q": query, "format": "json"}
        if time_range := _bucket(recency_days, SEARXNG_RANGES):
            params["time_range"] = time_range
        try:  # the user named this server: a local address is what they asked for
            answer = fetch(f"{self.base_url}/search?{urlencode(params)}", allow_private=True,
                           types=("application/json",))
            results = json.loads(answer.text()).get("results", [])
        except (FetchError, ValueError, AttributeError) as e:
            raise SearchError(f"SearXNG at {self.base_url} did not answer: {e}") from None
        return [Result(str(r.get("title", "")), str(r["url"]), str(r.get("content") or ""))
                for r in results[:RESULTS] if isinstance(r, dict) and r.get("url")]

    def open(self, url: str) -> Page | None:
        return None


class DdgBackend:
    label = "DuckDuckGo (ddgs)"

    def __init__(self) -> None:
        require("--browser ddg", "browser", "ddgs")

    def search(self, query: str, recency_days: int | None) -> list[Result]:
        try:
            from ddgs import DDGS
        except ImportError:
            raise SearchError(needs("DuckDuckGo search", "browser", "ddgs")) from None
        try:
            found = DDGS(timeout=10).text(query, max_results=RESULTS, timelimit=_bucket(recency_days, DDG_LIMITS))
        except Exception as e:  # ddgs raises its own exception types for every network failure
            raise SearchError(f"DuckDuckGo did not answer: {e}") from None
        return [Result(str(r.get("title", "")), str(r["href"]), str(r.get("body") or ""))
                for r in found or [] if r.get("href")]

    def open(self, url: str) -> Page | None:
        return None

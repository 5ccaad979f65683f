"""The browser's citations in a streamed answer (GLM-4's `【{id}†{text}】`, as the model's family writes
them), shown as numbered references [1], [2] ... with their addresses listed after the answer. The saved
conversation keeps the model's own text."""

from __future__ import annotations

import re
from collections.abc import Callable

from glm4_local.tools.observation import Source

LONGEST = 230  # an unclosed citation held back longer than this is text, not a citation


class Citations:
    """Feed the answer's chunks; each finished citation is replaced by its reference number."""

    def __init__(self, pattern: str, source: Callable[[str], Source | None]) -> None:
        self.pattern = re.compile(pattern)
        self.opening, self.closing = pattern[0], pattern[-1]  # its literal marks (see BuiltInTools.citation)
        self.source = source
        self.held = ""
        self.numbers: dict[str, int] = {}
        self.references: list[Source] = []

    def _replace(self, match: re.Match[str]) -> str:
        found = self.source(match.group(1))
        if found is None:
            return match.group(0)
        if found.url not in self.numbers:
            self.references.append(found)
            self.numbers[found.url] = len(self.references)
        return f"[{self.numbers[found.url]}]"

    def feed(self, chunk: str) -> str:
        text = self.held + chunk
        start = text.rfind(self.opening)
        if start != -1 and self.closing not in text[start:] and len(text) - start <= LONGEST:
            text, self.held = text[:start], text[start:]
        else:
            self.held = ""
        return self.pattern.sub(self._replace, text)

    def end(self) -> str:
        rest, self.held = self.held, ""
        return self.pattern.sub(self._replace, rest)

    def listing(self) -> list[str]:
        return [f"[{n}] {source.title} — {source.url}" for n, source in enumerate(self.references, 1)]

"""What a tool gives back: GLM-4 observations, exactly as the model reads them, and what the user is shown.

An observation renders `<|observation|>{metadata}\\n{content}`: a `python` result has no metadata, a
search `browser_result`, a page opened by mclick `quote_result [N†source]`, a failure `system_error`
(../shared/glm4-reference/ALL_TOOLS.md). Front-ends show `shown` (a short line) and `image`; the
model reads only metadata and content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MAX_OUTPUT_CHARS = 20_000  # of one tool result, as the demo's code interpreter gave the model
SYSTEM_ERROR = "system_error"
BROWSER_RESULT = "browser_result"


@dataclass(frozen=True)
class Source:
    """A page the model may cite: its title and address."""

    title: str
    url: str


@dataclass(frozen=True)
class Observation:
    metadata: str
    content: str
    shown: str = ""  # what the user sees of it (a line; the content when empty)
    image: Path | None = None  # a picture the tool made (a plot), saved for the user
    source: Source | None = None  # the page it quotes

    def as_message(self) -> dict[str, Any]:
        """The OpenAI-style tool message that records it (metadata kept for GLM-4's template); the engine
        adds the id of the call it answers."""
        message: dict[str, Any] = {"role": "tool", "content": self.content}
        if self.metadata:
            message["metadata"] = self.metadata
        if self.image is not None:
            message["image"] = str(self.image)
        return message

    def as_json(self) -> dict[str, Any]:
        shown = {"metadata": self.metadata, "content": self.content}
        if self.image is not None:
            shown["image"] = str(self.image)
        if self.source is not None:
            shown["source"] = {"title": self.source.title, "url": self.source.url}
        return shown


def cut(text: str, length: int | None = None) -> str:
    """At most MAX_OUTPUT_CHARS of a text of `length` characters (its own, unless it was already cut)."""
    length = len(text) if length is None else length
    if length <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[output cut: the first {MAX_OUTPUT_CHARS:,} of {length:,} characters]"


def system_error(content: str, shown: str = "") -> Observation:
    """A failure the model can read and recover from (kernel died, backend down, server gone)."""
    return Observation(SYSTEM_ERROR, content, shown or content.splitlines()[0] if content else shown)


@dataclass
class Step:
    """One call and what it gave: for front-ends to show and for `--json` to report."""

    tool: str
    payload: str
    observations: list[Observation] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "input": self.payload, "observations": [o.as_json() for o in self.observations]}


class Tool(Protocol):
    """A built-in tool (python, simple_browser) or a bridge to functions (MCP): run a call, end its state."""

    def run(self, name: str, payload: str) -> Sequence[Observation]: ...

    def interrupt(self) -> None:
        """Stop the call in progress (Ctrl-C); the tool stays usable."""

    def close(self) -> None: ...


Confirm = Callable[[str], bool]  # asked before something runs unconfined; False declines

"""The optional packages GLM-4's built-in tools need, by the extra that installs them (pyproject.toml):
checked when a tool is switched on, so a missing one is one line naming the extra, not a failed call."""

from __future__ import annotations

import importlib.util

from glm4_local.core.errors import Glm4LocalError

EXTRAS: dict[str, tuple[str, ...]] = {
    "code": ("jupyter_client", "ipykernel"),  # --python
    "browser": ("trafilatura", "ddgs", "libzim", "pypdf"),  # --browser (each backend needs some of them)
    "mcp": ("mcp",),  # --mcp
    "documents": ("pypdf", "python-docx", "trafilatura", "charset-normalizer"),  # chat --file: PDF, DOCX, HTML
}


def install_line(extra: str) -> str:
    return f"pip install \"glm4-local[{extra}]\""


def needs(what: str, extra: str, *modules: str) -> str:
    """The line that says `what` needs `modules` and which extra brings them."""
    return f"{what} needs {', '.join(modules)}: {install_line(extra)}"


def require(feature: str, extra: str, *modules: str) -> None:
    """Refuse `feature` (a flag) unless `modules` (of `extra`) can be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Glm4LocalError(needs(feature, extra, *missing))

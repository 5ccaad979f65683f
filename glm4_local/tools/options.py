"""Which of GLM-4's tools a chat or a server runs, and how: the options' one declaration.

Each field's default and help live here, beside the field; the command line builds its flags from
them (cli_options.TOOL_OPTIONS), so `chat` and `serve` offer the same flags with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glm4_local.tools.program import ToolRunner

PYTHON_TIMEOUT = 60.0  # seconds a cell may run: what GLM-4's prompt promises the model
BACKEND_HELP = "searxng:URL, ddg, zim:FILE.zim or folder:DIR"  # the --browser values (tools/search_backends.py)


def flag(name: str, help: str, metavar: str | None = None, *names: str, **more: Any) -> dict[str, Any]:
    """A field's command-line flag, as dataclass field metadata: its name (and other `names`), help and
    metavar, and `more` of what the parser checks (min, max, envvar)."""
    return {"flag": (name, *names), "help": help, "metavar": metavar, "more": more}


@dataclass(frozen=True)
class ToolOptions:
    python: bool = field(default=False, metadata=flag(
        "--python", "GLM-4's code interpreter: the model's Python runs in a sandboxed Jupyter kernel (bubblewrap "
        "on Linux, sandbox-exec on macOS), one per conversation, its files in /mnt/data."))
    python_timeout: float = field(default=PYTHON_TIMEOUT, metadata=flag(
        "--python-timeout", "Seconds a cell may run before it is interrupted (the model reads 'Timed out')."))
    # run the model's code without a sandbox, each cell asked first (the interactive chat only)
    unconfined: bool = field(default=False, metadata=flag(
        "--python-unconfined", "Run the model's code WITHOUT a sandbox (network, your files); you are asked "
        "before each run."))
    browser: str | None = field(default=None, metadata=flag(
        "--browser", f"GLM-4's web browser, searching with {BACKEND_HELP}.", "BACKEND"))
    allow_private: bool = field(default=False, metadata=flag(
        "--browser-allow-private", "Let the browser open pages on this machine and private networks."))
    mcp: Path | None = field(default=None, metadata=flag(
        "--mcp", "MCP servers whose tools GLM-4 may call (the mcpServers JSON of Cursor and Claude Desktop).",
        "FILE"))
    program: ToolRunner | None = None  # the user's own program, answering their functions (chat --tool-exec)

    @property
    def any(self) -> bool:
        return self.python or self.browser is not None or self.mcp is not None or self.program is not None

"""A tool call and its results in the terminal: code as a highlighted block before it runs, its output
after; the browser's actions and the pages it opened; a function's arguments and result."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from glm4_local.core.families.replies import ToolCall
from glm4_local.core.words import counted
from glm4_local.frontends.visible import visible
from glm4_local.tools.observation import SYSTEM_ERROR, Observation

MAX_SHOWN_LINES = 40


def show_call(console: Console, call: ToolCall, kind: str | None) -> None:
    """`kind`: the built-in tool it calls ("code", "browser"), None for a function."""
    arguments = visible(call.arguments)
    if kind == "code":
        code = Syntax(arguments.strip("\n"), "python", theme="ansi_dark", background_color="default")
        console.print(Panel(code, title=visible(call.name), title_align="left", border_style="cyan", expand=False))
    elif kind == "browser":
        for line in arguments.splitlines():
            if line.strip():
                console.print(Text(f"browser › {line.strip()}", style="cyan"))
    else:
        console.print(Text(f"→ {visible(call.name)}({arguments})", style="cyan"))


def _clipped(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= MAX_SHOWN_LINES:
        return "\n".join(lines)
    return "\n".join(lines[:MAX_SHOWN_LINES]) + f"\n… ({counted(len(lines) - MAX_SHOWN_LINES, 'more line')})"


def show_results(console: Console, kind: str | None, observations: list[Observation]) -> None:
    for observation in observations:
        failed = observation.metadata == SYSTEM_ERROR
        style = "red" if failed else "dim"
        if kind == "code" and not failed:
            console.print(Text(visible(_clipped(observation.shown)) or "(no output)", style=style))
            if observation.image:
                console.print(Text(f"[Image] saved as {observation.image}", style="cyan"))
        else:
            console.print(Text(f"← {visible(observation.shown or _clipped(observation.content)[:500])}", style=style))

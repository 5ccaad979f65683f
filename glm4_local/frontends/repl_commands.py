"""The chat's slash commands: each takes the text after its name and reports through `say`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from glm4_local.chat.engine import ChatEngine, Turn
from glm4_local.chat.session import load_conversation, save_json
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.words import counted


class Repl(Protocol):
    """What the commands need of the terminal chat (frontends/repl.py)."""

    EXIT: object
    engine: ChatEngine
    model_name: str

    def say(self, text: str, style: str = "dim") -> None: ...

    def converse(self, start: Callable[[], Turn | None]) -> None: ...

    def show_stats(self) -> None: ...

    def show_last_exchange(self) -> None: ...

    def attach(self, path: Path) -> None:
        """Read a file into the next message (and say how large it is)."""

    def tool_lines(self) -> list[str]:
        """What is enabled: built-in tools, MCP servers, functions and who answers them."""

# (usage, what it does): /help prints them, and `chat --help` lists the usages
COMMANDS: tuple[tuple[str, str], ...] = (
    ("/help", "this list"),
    ("/show", "model, sampling settings, system prompt and tools"),
    ("/set NAME VALUE", "change sampling: temp, top_p, top_k, min_p, repeat_penalty, seed, max_tokens"),
    ("/system [TEXT]", "show the system prompt, or set it; /system --clear removes it"),
    ("/reset", "start over (keeps the system prompt and tools)"),
    ("/retry", "answer the last message again"),
    ("/undo", "remove the last exchange"),
    ("/save FILE", "write the conversation (OpenAI-style JSON)"),
    ("/load FILE", "continue a saved conversation"),
    ("/stats", "tokens and speed of the last reply"),
    ("/tools", "the tools enabled (python, browser, MCP servers, functions)"),
    ("/file PATH", "put a document (text, Markdown, HTML, PDF, DOCX) into your next message"),
    ("/exit", "leave (or Ctrl-D)"),
)
KEYS = ("Enter sends; Alt-Enter (or Esc then Enter) starts a new line; pasted text keeps its lines.\n"
        "A message that starts with / : type // (sent as one /) or a space first.")
HELP = "\n".join(f"{usage:<20} {what}" for usage, what in COMMANDS) + "\n" + KEYS


# /set NAME: (engine field, parser, allowed range for the message)
SETTINGS: dict[str, tuple[str, Callable[[str], float | int], str]] = {
    "temp": ("temperature", float, "0 (greedy) or more"), "temperature": ("temperature", float, "0 or more"),
    "top_p": ("top_p", float, "0 to 1"), "top_k": ("top_k", int, "0 (off) or more"),
    "min_p": ("min_p", float, "0 to 1"), "repeat_penalty": ("repeat_penalty", float, "1 (off) or more"),
    "seed": ("seed", int, "a whole number"), "max_tokens": ("max_tokens", int, "1 or more, or 0 for no limit"),
}


def _valid(field: str, value: float) -> bool:
    if field in ("top_p", "min_p"):
        return 0 <= value <= 1
    if field == "max_tokens":
        return value >= 0
    return field == "seed" or value >= 0


class Commands:
    def __init__(self, repl: Repl) -> None:
        self.repl = repl
        self.engine = repl.engine
        self.table: dict[str, Callable[[str], object]] = {
            "/help": lambda _: repl.say(HELP), "/show": self.show, "/set": self.set, "/system": self.system,
            "/reset": self.reset, "/retry": self.retry, "/undo": self.undo, "/save": self.save,
            "/load": self.load, "/file": self.file, "/stats": lambda _: repl.show_stats(),
            "/tools": lambda _: repl.say("\n".join(repl.tool_lines()) or "no tools (see chat --help: --python, "
                                         "--browser, --mcp, --tools)"), "/exit": lambda _: repl.EXIT,
            "/quit": lambda _: repl.EXIT,
        }

    def run(self, line: str) -> object:
        name, _, arg = line.strip().partition(" ")
        command = self.table.get(name)
        if command is None:
            self.repl.say(f"unknown command {name}; /help lists them (start with // to send text that begins "
                          "with /)", "yellow")
            return None
        return command(arg.strip())

    def show(self, _: str) -> None:
        s = self.engine.settings
        sampling = s.sampling
        seed = sampling.seed if sampling.seed is not None else "random"
        tools = self.engine.conversation.tools or []
        names = ", ".join(t.get("function", {}).get("name", t.get("type", "?")) for t in tools) or "none"
        self.repl.say("\n".join([
            f"model           {self.repl.model_name}",
            f"context         {self.engine.runtime.n_ctx:,} tokens",
            f"sampling        temp {sampling.temperature:g}, top_p {sampling.top_p:g}, top_k {sampling.top_k}, "
            f"min_p {sampling.min_p:g}, repeat_penalty {sampling.repeat_penalty:g}",
            f"max_tokens      {s.max_tokens or 'no limit'}; seed {seed}",
            f"system prompt   {self.engine.conversation.system_prompt or '(none)'}",
            f"tools           {names}",
        ]))

    def set(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        if name not in SETTINGS or not value.strip():
            raise Glm4LocalError(f"usage: /set NAME VALUE, NAME one of {', '.join(SETTINGS)}")
        field, parse, allowed = SETTINGS[name]
        try:
            number = parse(value.strip())
        except ValueError:
            raise Glm4LocalError(f"{name} takes {allowed}, not {value.strip()!r}") from None
        if not _valid(field, number):
            raise Glm4LocalError(f"{name} takes {allowed}, not {value.strip()}")
        if field == "max_tokens" and number == 0:
            number = None  # type: ignore[assignment]
        self.engine.set_sampling(**{field: number})
        self.repl.say(f"{name} = {number if number is not None else 'no limit'} (from the next reply)")

    def system(self, text: str) -> None:
        if not text:
            current = self.engine.conversation.system_prompt
            self.repl.say(f"system prompt: {current}" if current else "no system prompt (/system TEXT sets one)")
        elif text == "--clear":
            self.engine.set_system(None)
            self.repl.say("system prompt removed")
        else:
            self.engine.set_system(text)
            self.repl.say("system prompt set")

    def reset(self, _: str) -> None:
        self.engine.reset()
        self.repl.say("conversation cleared")

    def retry(self, _: str) -> None:
        if not any(m.get("role") == "user" for m in self.engine.conversation.messages):
            self.repl.say("nothing to retry yet")
            return
        self.repl.converse(self.engine.retry)

    def undo(self, _: str) -> None:
        self.repl.say("removed the last exchange" if self.engine.undo() else "nothing to undo")

    def save(self, path: str) -> None:
        if not path:
            raise Glm4LocalError("/save needs a file name")
        save_json(Path(path).expanduser(), self.engine.conversation.to_json())
        self.repl.say(f"saved to {path}")

    def file(self, path: str) -> None:
        if not path:
            raise Glm4LocalError("/file needs a file name")
        self.repl.attach(Path(path))

    def load(self, path: str) -> None:
        if not path:
            raise Glm4LocalError("/load needs a file name")
        loaded = load_conversation(Path(path).expanduser())
        self.engine.replace_conversation(loaded)
        self.repl.say(f"loaded {counted(len(loaded.messages), 'message')} from {path}")
        self.repl.show_last_exchange()

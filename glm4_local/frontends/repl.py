"""The interactive terminal chat: line editing, history, slash commands, streaming, Ctrl-C."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from glm4_local.chat.engine import ChatEngine, Turn, TurnResult
from glm4_local.chat.session import data_home, load_conversation, save_json
from glm4_local.chat.toolcalls import ToolRunner
from glm4_local.core.errors import Glm4LocalError

HELP = """\
/help            this list
/reset           start over (keeps the system prompt and tools)
/system TEXT     set the system prompt (empty: remove it)
/save FILE       write the conversation as OpenAI-style messages JSON
/load FILE       continue a saved conversation
/retry           answer the last message again
/undo            remove the last exchange
/stats           tokens and speed of the last reply
/exit            leave (Ctrl-D or Ctrl-C at an empty prompt too)
Enter sends; Alt-Enter (or Esc then Enter) starts a new line; pasted text keeps its lines."""

EXIT = object()


def key_bindings() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _(event) -> None:
        event.current_buffer.insert_text("\n")

    @keys.add("c-c")
    def _(event) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(result=EXIT)

    @keys.add("c-d")
    def _(event) -> None:
        if not event.current_buffer.text:
            event.app.exit(result=EXIT)

    return keys


class Repl:
    def __init__(self, engine: ChatEngine, console: Console, tool_exec: ToolRunner | None = None,
                 verbose: bool = False, history_file: Path | None = None) -> None:
        self.engine = engine
        self.console = console
        self.tool_exec = tool_exec
        self.verbose = verbose
        history_file = history_file or data_home() / "history"
        history: History
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(history_file))
        except OSError:
            history = InMemoryHistory()
        self.prompt: PromptSession[object] = PromptSession(
            history=history, key_bindings=key_bindings(), multiline=False)
        self.commands: dict[str, Callable[[str], object]] = {
            "/help": lambda _: self.say(HELP), "/reset": self.cmd_reset, "/system": self.cmd_system,
            "/save": self.cmd_save, "/load": self.cmd_load, "/retry": self.cmd_retry, "/undo": self.cmd_undo,
            "/stats": lambda _: self.show_stats(), "/exit": lambda _: EXIT, "/quit": lambda _: EXIT,
        }

    def say(self, text: str, style: str = "dim") -> None:
        self.console.print(Text(text, style=style))

    def run(self) -> None:
        self.say("GLM-4 chat. /help for commands; Ctrl-D to leave.")
        while True:
            line = self.prompt.prompt("› ")
            if line is EXIT:
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/") and text.split()[0] in self.commands:
                command, _, arg = text.partition(" ")
                try:
                    if self.commands[command](arg.strip()) is EXIT:
                        return
                except Glm4LocalError as e:
                    self.say(f"error: {e}", "red")
                continue
            self.converse(lambda text=line: self.engine.send(text))

    # -- a reply and its tool calls ------------------------------------------------------------
    def converse(self, start: Callable[[], Turn | None]) -> None:
        try:
            turn = start()
        except Glm4LocalError as e:
            self.say(f"error: {e}", "red")
            return
        while turn is not None:
            result = self.stream(turn)
            call = result.reply.tool_call
            if result.reply.problem:
                self.console.print(Text(result.reply.text))
                self.say(f"(not a valid tool call: {result.reply.problem})", "yellow")
            if call is None or result.interrupted:
                return
            self.console.print(Text(f"→ {call.name}({call.arguments})", style="cyan"))
            if self.tool_exec:
                try:
                    observation = self.tool_exec.run(call)
                except KeyboardInterrupt:
                    # the call is answered, so the conversation stays well-formed; no reply is asked for
                    self.engine.add_observation(json.dumps({"error": "cancelled by the user"}))
                    self.say("[tool cancelled]", "yellow")
                    return
                self.say(f"← {observation.strip()[:500]}")
            else:
                observation = self.prompt.prompt("result› ")
                if observation is EXIT:
                    return
            turn = self.engine.send_observation(observation)

    def stream(self, turn: Turn) -> TurnResult:
        written: list[str] = []
        interrupted = False
        markdown = self.console.is_terminal
        try:
            if markdown:
                live = Live(Markdown(""), console=self.console, refresh_per_second=12, vertical_overflow="visible")
                with live:
                    for chunk in turn.display():
                        written.append(chunk)
                        live.update(Markdown("".join(written)), refresh=False)
            else:
                for chunk in turn.display():
                    written.append(chunk)
                    self.console.out(chunk, end="", highlight=False)
                self.console.out("")
        except KeyboardInterrupt:
            interrupted = True
        result = turn.finish(interrupted=interrupted)
        if interrupted:
            self.say("[interrupted: the partial reply is kept]", "yellow")
        if self.verbose:
            self.show_stats()
        return result

    def show_stats(self) -> None:
        last = self.engine.last
        if last is None:
            self.say("no reply yet")
            return
        t = last.timings
        self.say(f"prompt {t.prompt_tokens} tokens ({t.evaluated_tokens} evaluated, {t.prefill_tps:.1f} tok/s) · "
                 f"generated {t.generated_tokens} tokens ({t.decode_tps:.1f} tok/s) · stop: {last.stopped_by}")

    # -- slash commands ------------------------------------------------------------------------
    def cmd_reset(self, _: str) -> None:
        self.engine.reset()
        self.say("conversation cleared")

    def cmd_system(self, text: str) -> None:
        self.engine.set_system(text or None)
        self.say("system prompt set" if text else "system prompt removed")

    def cmd_save(self, path: str) -> None:
        if not path:
            raise Glm4LocalError("/save needs a file name")
        save_json(Path(path).expanduser(), self.engine.conversation.to_json())
        self.say(f"saved to {path}")

    def cmd_load(self, path: str) -> None:
        if not path:
            raise Glm4LocalError("/load needs a file name")
        loaded = load_conversation(Path(path).expanduser())
        self.engine.replace_conversation(loaded)
        self.say(f"loaded {len(loaded.messages)} messages from {path}")

    def cmd_retry(self, _: str) -> None:
        self.converse(self.engine.retry)

    def cmd_undo(self, _: str) -> None:
        self.say("removed the last exchange" if self.engine.undo() else "nothing to undo")


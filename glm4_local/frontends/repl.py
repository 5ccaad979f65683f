"""The interactive terminal chat: line editing, history, slash commands, streaming, Ctrl-C.

Ctrl-C stops a reply (keeping it) or clears the line; only Ctrl-D or /exit leave. SIGTERM or SIGHUP (a
closed terminal), which the CLI turns into an Interrupted with their number, stop a reply as Ctrl-C does
(it is kept and saved) and then leave, so the tools end as on /exit. When stdout is not a terminal
(`chat | tee log`) the prompt and notes go to stderr and replies to stdout as plain text.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import create_output
from rich.console import Console
from rich.markdown import Markdown
from rich.text import Text

from glm4_local.chat.engine import ChatEngine, Turn, TurnResult
from glm4_local.chat.tool_loop import CANCELLED, MAX_CHAINED_CALLS, Results, ToolLoop
from glm4_local.core.errors import Glm4LocalError, Interrupted
from glm4_local.core.families.replies import ToolCall
from glm4_local.core.paths import data_home
from glm4_local.documents.form import shown
from glm4_local.frontends.attach import Attachments
from glm4_local.frontends.citations import Citations
from glm4_local.frontends.reading import PromptReading
from glm4_local.frontends.repl_commands import Commands
from glm4_local.frontends.reply_view import ReplyView, Thoughts
from glm4_local.frontends.step_view import show_call, show_results
from glm4_local.frontends.visible import visible
from glm4_local.tools.toolbox import Toolbox


def leaving(error: KeyboardInterrupt) -> bool:
    """A termination signal (not Ctrl-C): the chat stops what it does, keeps it, and leaves."""
    return isinstance(error, Interrupted) and error.signal_number != signal.SIGINT


def key_bindings(exit_token: object, interrupt_token: object) -> KeyBindings:
    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _(event) -> None:
        event.current_buffer.insert_text("\n")

    @keys.add("c-c")
    def _(event) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(result=interrupt_token)

    @keys.add("c-d")
    def _(event) -> None:
        if not event.current_buffer.text:
            event.app.exit(result=exit_token)

    return keys


class Repl:
    EXIT = object()
    INTERRUPT = object()

    def __init__(self, engine: ChatEngine, console: Console, toolbox: Toolbox | None = None,
                 verbose: bool = False, history_file: Path | None = None, model_name: str = "") -> None:
        self.engine = engine
        self.toolbox = toolbox or Toolbox()
        self.verbose = verbose
        self.model_name = model_name
        self.plain: TextIO | None = None if console.is_terminal else sys.stdout  # replies as plain text
        # piped: replies are the output; everything else (prompt, notes) goes to the terminal on stderr
        piped = not console.is_terminal and sys.stderr.isatty()
        self.console = Console(stderr=True, highlight=False) if piped else console
        history_file = history_file or data_home() / "history"
        history: History
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(history_file))
        except OSError:
            history = InMemoryHistory()
        self.prompt: PromptSession[object] = PromptSession(
            history=history, key_bindings=key_bindings(self.EXIT, self.INTERRUPT), multiline=False,
            output=create_output(stdout=sys.stderr) if piped else None)
        self.commands = Commands(self)
        self.attachments = Attachments()  # files for the next message (--file, /file)

    def say(self, text: str, style: str = "dim") -> None:
        """A note; what it quotes (a server's error, a page's title, a file name) shown as text."""
        self.console.print(Text(visible(text), style=style))

    # -- the conversation loop -----------------------------------------------------------------
    def banner(self) -> None:
        tools = self.engine.conversation.tools or []
        self.say(f"GLM-4 chat{' with ' + self.model_name if self.model_name else ''}. /help for commands; "
                 "Ctrl-D or /exit to leave.")
        if tools:
            for line in self.tool_lines():
                self.say(line)

    def tool_lines(self) -> list[str]:
        """The built-in tools and MCP servers on, then the user's functions and who answers them."""
        toolbox = self.toolbox
        lines = [tool.describe() for tool in (toolbox.python, toolbox.browser) if tool]
        lines += toolbox.mcp.describe() if toolbox.mcp else []
        served = set(toolbox.mcp.routes) if toolbox.mcp else set()
        functions = [t["function"]["name"] for t in self.engine.conversation.tools or []
                     if t.get("type") == "function" and t["function"]["name"] not in served]
        if functions:
            answered = f"answered by {toolbox.program.executable.name}" if toolbox.program else "you type results"
            lines.append(f"tools: {', '.join(functions)} ({answered})")
        return lines

    def attach(self, path: Path) -> None:
        """Read a file for the next message and say its size, or why it cannot go (the chat goes on)."""
        try:
            self.say(self.attachments.add(self.engine, path), "cyan")
        except Glm4LocalError as e:
            self.say(f"error: {e}", "red")

    def confirm(self, code: str) -> bool:
        """Asked before code runs unconfined (no sandbox): only "y" runs it."""
        self.say("run this code on your machine, unconfined? [y/N]", "bold yellow")
        answer = self.prompt.prompt("run? ")
        return isinstance(answer, str) and answer.strip().lower() in ("y", "yes")

    def run(self) -> None:
        self.banner()
        while True:
            with self.engine.runtime.idle():  # step costs are measured while the user writes
                line = self.prompt.prompt("› ")
            if line is self.EXIT:
                self.goodbye()
                return
            if line is self.INTERRUPT:
                self.say("(Ctrl-D or /exit to leave)")
                continue
            assert isinstance(line, str)
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if self._command(line) is self.EXIT:
                    self.goodbye()
                    return
                continue
            text = line[1:] if line.startswith("//") else line.lstrip() if line.lstrip().startswith("/") else line
            self.converse(lambda text=text: self.engine.send(text, self.attachments.taken()))

    def _command(self, line: str) -> object:
        try:
            return self.commands.run(line)
        except Glm4LocalError as e:
            self.say(f"error: {e}", "red")
            return None

    def goodbye(self) -> None:
        autosave = self.engine.autosave
        if autosave and autosave.path.exists():
            self.say(f"saved to {autosave.path}; continue with: glm4-local chat --resume")

    def show_last_exchange(self) -> None:
        """The last user message and what followed, as a reminder after --resume or /load."""
        messages = self.engine.conversation.messages
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            return
        self.say(f"you: {shown(messages[last_user])}", "bold")
        for message in messages[last_user + 1 :]:
            if message.get("role") == "assistant" and message.get("content"):
                self.console.print(Markdown(visible(str(message["content"]))))
            elif message.get("tool_calls"):
                for call in message["tool_calls"]:
                    self.say(f"→ {call['function']['name']}({call['function'].get('arguments', '')})", "cyan")
            elif message.get("role") == "tool":
                self.say(f"← {str(message.get('content'))[:500]}")
        if self.engine.pending_call():
            self.say("(the last tool call has no result yet: it is answered as cancelled if you go on)")

    # -- a reply and its tool calls ------------------------------------------------------------
    def converse(self, start: Callable[[], Turn | None]) -> None:
        if self.engine.pending_call():
            self.engine.add_observation(CANCELLED)
        try:
            turn = start()
        except Glm4LocalError as e:
            self.say(f"error: {e}", "red")
            return
        if turn is None:
            return
        ending = ToolLoop(lambda name: True).converse(self.engine, turn, self.reply, self.tool_results)
        if ending.reason == "too many":
            self.say(f"[stopped: the model made more than {MAX_CHAINED_CALLS} tool calls in a row]", "yellow")
        elif ending.reason == "cancelled":
            self.say("[tool call cancelled]", "yellow")

    def reply(self, turn: Turn) -> TurnResult:
        """One reply streamed to the screen; a call that is not well formed shown as the text it is."""
        result = self.stream(turn)
        if result.reply.problem:
            self.console.print(Text(visible(result.reply.text)))
            self.say(f"(not a valid tool call: {result.reply.problem})", "yellow")
        return result

    def tool_results(self, call: ToolCall) -> Results | None:
        """The call's results (tool messages): run by a tool, or typed by the user; None when cancelled."""
        if self.toolbox.answers(call.name):
            kind = self.toolbox.names.kind(call.name)
            show_call(self.console, call, kind)
            try:
                with self.console.status(f"running {call.name}… (Ctrl-C stops it)", spinner="dots") \
                        if self.console.is_terminal and not self.toolbox.asks_first(call.name) \
                        else contextlib.nullcontext():
                    observations = self.toolbox.run(call)
            except KeyboardInterrupt as e:
                self.toolbox.interrupt()
                if leaving(e):
                    raise
                return None
            show_results(self.console, kind, observations)
            return [o.as_message() for o in observations]
        self.say(f"→ {call.name}({call.arguments})", "cyan")
        self.say(f"type what {call.name} returned and press Enter (Ctrl-C cancels the call)")
        while True:
            typed = self.prompt.prompt("result› ")
            if typed is self.EXIT or typed is self.INTERRUPT:
                return None
            if isinstance(typed, str) and typed.strip():
                return [{"content": typed}]
            self.say("an empty result is not sent; type it, or Ctrl-C to cancel the call")

    def stream(self, turn: Turn) -> TurnResult:
        interrupted = False
        chunks = turn.display()
        pattern = self.toolbox.names.citation
        citations = Citations(pattern, self.toolbox.source) if self.toolbox.browser and pattern else None
        try:
            thoughts = Thoughts(self.console) if self.plain is None else None
            turn.on_reasoning = thoughts
            try:
                first = self._first_chunk(chunks, turn)
            finally:
                if thoughts:
                    thoughts.end()
            with ReplyView(self.console, self.plain) as view:
                for chunk in _chain(first, chunks):
                    view.write(citations.feed(chunk) if citations else chunk)
                if citations and (rest := citations.end()):
                    view.write(rest)
        except KeyboardInterrupt as e:
            interrupted = True
            if leaving(e):
                turn.finish(interrupted=True)  # what was written is kept, and saved
                raise
        result = turn.finish(interrupted=interrupted)
        if citations and citations.references and result.reply.tool_call is None:
            for line in citations.listing():
                self.say(line, "cyan")
        if interrupted:
            kept = result.reply.text or result.reply.tool_call or result.reply.partial_call
            self.say("[interrupted: the partial reply is kept]" if kept else "[interrupted before the reply began]",
                     "yellow")
        elif result.stopped_by == "max_tokens":
            self.say(f"[cut: the reply reached max_tokens ({self.engine.settings.max_tokens}); /set max_tokens "
                     "raises it]", "yellow")
        elif result.stopped_by == "context":
            self.say("[cut: the context is full; /reset, or start with a larger --ctx]", "yellow")
        if self.verbose:
            self.show_stats()
        return result

    def _first_chunk(self, chunks: Iterator[str], turn: Turn) -> str | None:
        """Wait for the model's first words (prefill; a whole tool call) with a sign of life: a spinner,
        and a progress bar while a long prompt is read."""
        if not self.console.is_terminal:
            return next(chunks, None)
        with PromptReading(self.console, f"thinking… (prompt {turn.prompt_tokens:,} tokens)") as reading:
            turn.generation.on_progress = reading
            try:
                return next(chunks, None)
            finally:
                turn.generation.on_progress = None

    def show_stats(self) -> None:
        last = self.engine.last
        if last is None:
            self.say("no reply yet")
            return
        t = last.timings
        stop = "interrupted" if last.interrupted else (last.stopped_by or "-")
        self.say(f"prompt {t.prompt_tokens} tokens ({t.evaluated_tokens} evaluated, {t.prefill_tps:.1f} tok/s) · "
                 f"generated {t.generated_tokens} tokens ({t.decode_tps:.1f} tok/s) · stop: {stop}"
                 + (f" · drafted {t.drafted_tokens}, accepted {t.accepted_tokens}" if t.drafted_tokens else ""))


def _chain(first: str | None, rest: Iterable[str]) -> Iterator[str]:
    return itertools.chain([first] if first else [], rest)

"""The `chat` and `render` commands as library functions (the CLI only parses options)."""

from __future__ import annotations

import errno
import json
import signal
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from glm4_local.chat.engine import ChatEngine
from glm4_local.chat.models import resolve_model
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import Vocabulary
from glm4_local.chat.schema import load_tools
from glm4_local.chat.session import Autosave, Conversation, data_home, load_conversation, resume_latest
from glm4_local.chat.setup import ModelFacts, open_engine
from glm4_local.chat.template import ChatTemplate
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.registry import FAMILIES
from glm4_local.core.llama import door
from glm4_local.core.llama.prompt_cache import SUFFIX, entries_on_disk
from glm4_local.frontends.attach import Attachments
from glm4_local.frontends.model_plan import plan_model
from glm4_local.frontends.oneshot import run_oneshot
from glm4_local.frontends.tool_setup import ToolOptions, offered_tools, open_toolbox, user_functions
from glm4_local.frontends.visible import visible
from glm4_local.tools.toolbox import Toolbox


def _conversation(resume: bool, system: str | None, tools_path: Path | None, errors: Console
                  ) -> tuple[Conversation, Autosave]:
    if resume:
        conversation, autosave = resume_latest(lambda note: errors.print(note, style="yellow", markup=False))
    else:
        conversation, autosave = Conversation(), Autosave()
    if system is not None:
        conversation.set_system(system)
    if tools_path is not None:
        conversation.tools = load_tools(tools_path)
    return conversation, autosave


def _oneshot_text(prompt: str | None) -> str:
    piped = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if prompt and piped:
        return f"{prompt}\n\n{piped}"
    text = prompt or piped or ""
    if not text.strip():
        raise Glm4LocalError("nothing to answer: give -p TEXT or pipe text on stdin")
    return text


def start_chat(model: str | None, runtime_options: RuntimeOptions, sampling: Mapping[str, Any], *,
               max_tokens: int | None, system: str | None, prompt: str | None, tools_path: Path | None,
               tool_options: ToolOptions, files: tuple[Path, ...] = (), resume: bool, verbose: bool, as_json: bool,
               errors: Console) -> None:
    """The terminal chat, or one answer (`prompt`, or stdin not a terminal); `sampling` as in chat_settings."""
    interactive = prompt is None and sys.stdin is not None and sys.stdin.isatty() and not as_json
    model_path = resolve_model(model)  # before reading stdin: a missing model is the first thing to hear
    text = None if interactive else _oneshot_text(prompt)
    conversation, autosave = _conversation(resume, system, tools_path, errors)
    plan = plan_model(model_path, runtime_options, lambda line: errors.print(
        f"warning: {line}", style="yellow", markup=False, highlight=False))
    facts = plan.facts
    if interactive or verbose:
        errors.print(f"{facts.path.name}: {plan.describe()}", markup=False, highlight=False)

    def notify(message: str) -> None:  # it may quote a tool server's own words
        errors.print(visible(message), style="yellow", markup=False, highlight=False)

    functions = {t["function"]["name"] for t in user_functions(conversation.tools)}
    holder: list[Any] = []  # the interactive chat, once it exists, asks before unconfined code runs
    confirm = (lambda code: holder[0].confirm(code)) if interactive else None
    toolbox = open_toolbox(tool_options, autosave.path, confirm, notify, functions) \
        if tool_options.any else Toolbox()
    try:
        conversation.tools = offered_tools(conversation.tools, toolbox) if tool_options.any else conversation.tools
        with errors.status(f"loading {facts.path.name}…") if errors.is_terminal else nullcontext():
            engine = open_engine(facts, plan.options, sampling, max_tokens, conversation,
                                 autosave if interactive else None, notify)
        how = _ChatRun(text, interactive, resume, autosave, verbose, as_json, errors, facts.path.name, files)
        _converse(engine, toolbox, holder, how)
    finally:
        toolbox.close()


@dataclass(frozen=True)
class _ChatRun:
    text: str | None  # the one message to answer, when not interactive
    interactive: bool
    resume: bool
    autosave: Autosave
    verbose: bool
    as_json: bool
    errors: Console
    model_name: str
    files: tuple[Path, ...] = ()  # documents for the first message


def _converse(engine: ChatEngine, toolbox: Toolbox, holder: list[Any], how: _ChatRun) -> None:
    verbose, errors, autosave = how.verbose, how.errors, how.autosave
    if not how.interactive:
        attachments = Attachments()
        for path in how.files:
            note = attachments.add(engine, path)  # one that does not fit, or cannot be read, ends here
            if verbose:
                errors.print(note, markup=False, highlight=False)
        run_oneshot(engine, attachments.message(how.text or ""), toolbox, how.as_json)
        if verbose and engine.last:
            t = engine.last.timings
            errors.print(f"prompt {t.prompt_tokens} tokens ({t.prefill_tps:.1f} tok/s), generated "
                         f"{t.generated_tokens} ({t.decode_tps:.1f} tok/s)", markup=False, highlight=False)
        return
    from glm4_local.frontends.repl import Repl

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started from nohup or a background job: the chat still owns its terminal, and Ctrl-C must stop a reply
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # its own console: replies wrap to the window (the CLI's consoles print long lines unwrapped)
    repl = Repl(engine, Console(highlight=False), toolbox=toolbox, verbose=verbose, model_name=how.model_name)
    holder.append(repl)
    for path in how.files:
        repl.attach(path)
    if how.resume:
        errors.print(f"resumed {autosave.path} ({len(engine.conversation.messages)} messages)", markup=False)
        repl.show_last_exchange()
    repl.run()


def prompt_cache_dir() -> Path:
    """Where the chat keeps long prompts' KV state."""
    return data_home() / "cache" / "prompts"


def with_prompt_cache(options: RuntimeOptions, folder: Path | None, gib: float) -> RuntimeOptions:
    return replace(options, prompt_cache=folder if gib > 0 else None, prompt_cache_bytes=int(gib * 2**30))


def show_prompt_cache(folder: Path, clear: bool, out: Console) -> None:
    """`glm4-local cache`: each saved prompt (size, last used), or remove them all."""
    entries = entries_on_disk(folder)
    if clear:
        for path, _, _ in entries:
            path.unlink(missing_ok=True)
        others = len(list(folder.glob(f"*{SUFFIX}"))) if folder.is_dir() else 0
        left = f"; left {others} that are not saved prompts (not regular files)" if others else ""
        out.print(f"removed {len(entries)} saved prompt(s) from {folder}{left}", markup=False)
        return
    total = sum(size for _, size, _ in entries)
    out.print(f"{len(entries)} saved prompt(s) in {folder}, {total / 2**30:.2f} GiB", markup=False)
    for path, size, used in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(used))
        out.print(f"  {path.name}  {size / 2**20:9.1f} MiB  last used {when}", markup=False)


def render_conversation(conversation_path: Path, tools_path: Path | None, model: str | None,
                        tokens: bool) -> str | list[int]:
    """The exact prompt for a saved conversation: its text, or (with a model) the token ids chat feeds."""
    conversation = load_conversation(conversation_path)
    tools = load_tools(tools_path) if tools_path else conversation.tools
    if tokens and model is None:
        raise Glm4LocalError("token ids need a model (they come from the model's vocabulary)")
    facts = ModelFacts.read(resolve_model(model)) if model is not None else None
    # without a model: the published template of the first (flagship) family
    family = facts.family if facts else FAMILIES[0]
    template = facts.template if facts else ChatTemplate.of(family)
    pieces = template.pieces(family.replies.template_messages(conversation.messages, tools))
    if not tokens:
        return "".join(p.text for p in pieces)
    assert facts is not None
    return Vocabulary(door.load(facts.path, header=facts.header, vocab_only=True), facts.family).tokens(pieces)


def render(conversation_path: Path, tools_path: Path | None, model: str | None, tokens: bool, out: Console) -> None:
    """Print the prompt's exact bytes (no trailing newline), or its token ids as JSON."""
    result = render_conversation(conversation_path, tools_path, model, tokens)
    if isinstance(result, list):
        out.print(json.dumps(result), markup=False)
    else:
        write_all(result.encode("utf-8"))


def write_all(data: bytes) -> None:
    """`data` to stdout, every byte or an OSError: a large write to a file at its size limit or on a full
    disk is cut short, which Python's buffered writer reports only as a smaller count."""
    sys.stdout.flush()
    stream, view = sys.stdout.buffer, memoryview(data)
    while view:
        written = stream.write(view)
        if not written:
            raise OSError(errno.EIO, "the output takes no more data")
        view = view[written:]
    stream.flush()

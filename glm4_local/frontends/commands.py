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

from glm4_local.chat.context_plan import ContextTooLarge
from glm4_local.chat.engine import ChatEngine
from glm4_local.chat.models import resolve_model
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import Vocabulary
from glm4_local.chat.schema import load_tools
from glm4_local.chat.session import Autosave, Conversation, load_conversation, resume_latest
from glm4_local.chat.setup import ModelFacts, open_engine
from glm4_local.chat.template import ChatTemplate
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.registry import FAMILIES
from glm4_local.core.llama import door
from glm4_local.core.llama.prompt_cache import SUFFIX, entries_on_disk, entry_label
from glm4_local.core.paths import data_home
from glm4_local.core.words import counted
from glm4_local.frontends.attach import Attachments
from glm4_local.frontends.model_plan import ModelPlan, plan_model
from glm4_local.frontends.oneshot import run_oneshot
from glm4_local.frontends.store_view import model_or_first_pull
from glm4_local.frontends.tool_setup import offered_tools, open_toolbox, user_functions
from glm4_local.frontends.visible import visible
from glm4_local.tools.options import ToolOptions
from glm4_local.tools.toolbox import Toolbox


def _conversation(resume: bool | Path, system: str | None, tools_path: Path | None, errors: Console
                  ) -> tuple[Conversation, Autosave]:
    if isinstance(resume, Path):  # an exported conversation: continued in a new autosave, the file kept as it is
        conversation, autosave = load_conversation(resume.expanduser()), Autosave()
    elif resume:
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
               tool_options: ToolOptions, files: tuple[Path, ...] = (), resume: bool | Path, verbose: bool,
               as_json: bool, errors: Console) -> None:
    """The terminal chat, or one answer (`prompt`, or stdin not a terminal); `sampling` as in chat_settings.
    `resume`: True for the last autosaved conversation, or a conversation file."""
    interactive = prompt is None and sys.stdin is not None and sys.stdin.isatty() and not as_json
    model_path = model_or_first_pull(model, errors)  # before reading stdin: a missing model comes first
    text = None if interactive else _oneshot_text(prompt)
    conversation, autosave = _conversation(resume, system, tools_path, errors)
    plan = _plan_for(conversation, model_path, runtime_options, errors)
    facts = plan.facts
    if interactive or verbose:
        # wrapped between words (the CLI's consoles otherwise leave wrapping to the terminal, mid-word)
        errors.print(f"{facts.path.name}: {plan.describe()}", markup=False, highlight=False,
                     soft_wrap=not errors.is_terminal)

    def notify(message: str) -> None:  # it may quote a tool server's own words
        errors.print(visible(message), style="yellow", markup=False, highlight=False)

    functions = {t["function"]["name"] for t in user_functions(conversation.tools)}
    holder: list[Any] = []  # the interactive chat, once it exists, asks before unconfined code runs
    confirm = (lambda code: holder[0].confirm(code)) if interactive else None
    toolbox = open_toolbox(tool_options, facts.family.replies.built_in, autosave.path, confirm, notify, functions) \
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


def _plan_for(conversation: Conversation, model_path: Path, options: RuntimeOptions, errors: Console) -> ModelPlan:
    """The model's plan; a resumed conversation reopens in the context it was held in unless --ctx says
    otherwise (and says so when that no longer fits)."""

    def warn(line: str) -> None:
        errors.print(f"warning: {line}", style="yellow", markup=False, highlight=False,
                     soft_wrap=not errors.is_terminal)

    held = conversation.context
    if held is None or options.ctx_given:
        return plan_model(model_path, options, warn)
    try:
        plan = plan_model(model_path, replace(options, ctx=held), warn)
    except ContextTooLarge as e:
        raise Glm4LocalError(f"this conversation was held in a {held:,}-token context, which does not fit now: "
                             f"{e}; give --ctx to reopen it in a smaller one") from None
    if plan.n_ctx < held:
        warn(f"this conversation was held in a {held:,}-token context; {model_path.name} was trained for "
             f"{plan.n_ctx:,}, so it reopens in that (its oldest turns may be left out)")
    return plan


@dataclass(frozen=True)
class _ChatRun:
    text: str | None  # the one message to answer, when not interactive
    interactive: bool
    resume: bool | Path
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
        run_oneshot(engine, how.text or "", attachments.taken(), toolbox, how.as_json)
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
        source = how.resume if isinstance(how.resume, Path) else autosave.path
        errors.print(f"resumed {source} ({counted(len(engine.conversation.messages), 'message')}, context "
                     f"{engine.runtime.n_ctx:,} tokens)", markup=False, highlight=False,
                     soft_wrap=not errors.is_terminal)
        repl.show_last_exchange()
    repl.run()


def prompt_cache_dir() -> Path:
    """Where the chat keeps long prompts' KV state."""
    return data_home() / "cache" / "prompts"


def show_prompt_cache(folder: Path, clear: bool, out: Console) -> None:
    """`glm4-local cache`: each saved prompt (size, last used), or remove them all."""
    entries = entries_on_disk(folder)
    if clear:
        for path, _, _ in entries:
            path.unlink(missing_ok=True)
        others = len(list(folder.glob(f"*{SUFFIX}"))) if folder.is_dir() else 0
        left = f"; left {others} that are not saved prompts (not regular files)" if others else ""
        out.print(f"removed {counted(len(entries), 'saved prompt')} from {folder}{left}", markup=False)
        return
    total = sum(size for _, size, _ in entries)
    out.print(f"{counted(len(entries), 'saved prompt')} in {folder}, {total / 2**30:.2f} GiB", markup=False)
    for path, size, used in entries:
        model, preview = entry_label(path)
        words = f"“{visible(preview)}…”" if preview else f"({path.name})"
        out.print(f"  {size / 2**20:9.1f} MiB  used {_age(time.time() - used):>8}  {visible(model) or '-'}  {words}",
                  markup=False, highlight=False)


def _age(seconds: float) -> str:
    """How long ago, as people say it: 5 min ago, 3 h ago, 2 days ago."""
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{counted(n, unit)} ago" if unit == "day" else f"{n} {unit} ago"
    return "just now"


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

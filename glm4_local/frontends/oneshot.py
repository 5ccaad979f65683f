"""Non-interactive chat (`-p`, or stdin not a terminal): the answer on stdout, or --json."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from rich.console import Console

from glm4_local.chat.engine import ChatEngine, Turn, TurnResult
from glm4_local.chat.tool_loop import Results, ToolLoop
from glm4_local.core.families.replies import ToolCall
from glm4_local.frontends.reading import PromptReading
from glm4_local.frontends.reply_view import Thoughts
from glm4_local.frontends.visible import visible
from glm4_local.tools.observation import Step
from glm4_local.tools.toolbox import Toolbox


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class _Shown:
    """stdout on a terminal: the model's words with their control characters shown as text (piped, the
    answer goes out exactly as written)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(visible(text))

    def flush(self) -> None:
        self.stream.flush()


def answer_stream() -> Writer:
    return _Shown(sys.stdout) if sys.stdout.isatty() else sys.stdout


@dataclass
class Answer:
    content: str
    tool_calls: list[dict[str, Any]]
    results: list[TurnResult]
    steps: list[Step] = field(default_factory=list)
    stopped: str | None = None  # why the answer ended without a final reply

    def as_json(self) -> dict[str, Any]:
        # every model call of the answer counts, as OpenAI counts each request; what the KV cache
        # already held is in usage but not in timings.prompt_tokens_evaluated
        prompt = sum(r.timings.prompt_tokens for r in self.results)
        completion = sum(r.timings.generated_tokens for r in self.results)
        last = self.results[-1].timings if self.results else None
        shown: dict[str, Any] = {
            "content": self.content,
            "tool_calls": self.tool_calls,
            "steps": [step.as_json() for step in self.steps],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            "timings": {
                "prompt_tokens_evaluated": sum(r.timings.evaluated_tokens for r in self.results),
                "prefill_seconds": round(sum(r.timings.prefill_seconds for r in self.results), 4),
                "decode_seconds": round(sum(r.timings.decode_seconds for r in self.results), 4),
                "prefill_tokens_per_second": round(last.prefill_tps, 2) if last else 0.0,
                "decode_tokens_per_second": round(last.decode_tps, 2) if last else 0.0,
                "drafted_tokens": sum(r.timings.drafted_tokens for r in self.results),
                "accepted_tokens": sum(r.timings.accepted_tokens for r in self.results),
            },
        }
        if reasoning := "\n\n".join(r.reply.reasoning for r in self.results if r.reply.reasoning):
            shown["reasoning_content"] = reasoning  # a reasoning model's thoughts, apart from the answer
        if self.stopped:
            shown["stopped"] = self.stopped
        return shown


def answer(engine: ChatEngine, text: str, toolbox: Toolbox | None, out: Writer | None,
           documents: Sequence[Mapping[str, str]] = ()) -> Answer:
    """One user message (with its documents); calls the toolbox answers are run and answered until a plain reply."""
    toolbox = toolbox or Toolbox()
    found = Answer("", [], [])

    def reply(turn: Turn) -> TurnResult:
        result, streamed = _streamed(turn, out)
        found.results.append(result)
        if result.reply.tool_call is not None:
            found.tool_calls.append(engine.conversation.messages[-1]["tool_calls"][0])
            return result
        # a malformed tool call is shown as the text the model wrote
        content = result.reply.text if result.reply.problem else engine.conversation.messages[-1]["content"]
        found.content = content or ""
        if out and not streamed:
            out.write(found.content)
        return result

    def run(call: ToolCall) -> Results:
        step = Step(call.name, call.arguments, toolbox.run(call))
        found.steps.append(step)
        return [o.as_message() for o in step.observations]

    ending = ToolLoop(toolbox.answers).converse(engine, engine.send(text, documents), reply, run)
    if ending.reason == "handed back" and ending.call is not None:
        found.stopped = f"the model called {ending.call.name}, and no --tool-exec was given to run it"
    else:
        found.stopped = ending.stopped
    return found


def _streamed(turn: Turn, out: Writer | None) -> tuple[TurnResult, bool]:
    """The reply streamed to `out`, and whether anything was written."""
    streamed = False
    reading = PromptReading(Console(stderr=True), None) if sys.stderr.isatty() else None
    # a reasoning model's thoughts, dimmed, where a person reads them (as the terminal chat shows them); never
    # on stdout
    thoughts = Thoughts(Console(stderr=True, highlight=False)) if sys.stderr.isatty() else None
    turn.on_reasoning = thoughts
    turn.generation.on_progress = reading
    with reading or contextlib.nullcontext():
        chunks = turn.display()
        first = next(chunks, None)
    turn.generation.on_progress = None
    if thoughts:
        thoughts.end()
    for chunk in itertools.chain([first] if first is not None else [], chunks):
        streamed = True
        if out:
            out.write(chunk)
            out.flush()
    return turn.finish(), streamed


def run_oneshot(engine: ChatEngine, text: str, documents: Sequence[Mapping[str, str]], toolbox: Toolbox | None,
                as_json: bool) -> None:
    out = None if as_json else answer_stream()
    result = answer(engine, text, toolbox, out, documents)
    if out is None:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
        return
    for call in result.tool_calls[len(result.steps):]:  # a call, shown as one (the REPL's way), not as text
        function = call["function"]
        out.write(f"→ {function['name']}({function['arguments']})")
    out.write("\n")
    if result.stopped:
        sys.stderr.write(f"stopped: {result.stopped}\n")

"""Non-interactive chat (`-p`, or stdin not a terminal): the answer on stdout, or --json."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from glm4_local.chat.engine import ChatEngine, Turn, TurnResult
from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.program import ToolRunner

MAX_TOOL_ROUNDS = 8


@dataclass
class Answer:
    content: str
    tool_calls: list[dict[str, Any]]
    results: list[TurnResult]

    def as_json(self) -> dict[str, Any]:
        # every model call of the answer counts, as OpenAI counts each request; what the KV cache
        # already held is in usage but not in timings.prompt_tokens_evaluated
        prompt = sum(r.timings.prompt_tokens for r in self.results)
        completion = sum(r.timings.generated_tokens for r in self.results)
        last = self.results[-1].timings if self.results else None
        return {
            "content": self.content,
            "tool_calls": self.tool_calls,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            "timings": {
                "prompt_tokens_evaluated": sum(r.timings.evaluated_tokens for r in self.results),
                "prefill_seconds": round(sum(r.timings.prefill_seconds for r in self.results), 4),
                "decode_seconds": round(sum(r.timings.decode_seconds for r in self.results), 4),
                "prefill_tokens_per_second": round(last.prefill_tps, 2) if last else 0.0,
                "decode_tokens_per_second": round(last.decode_tps, 2) if last else 0.0,
            },
        }


def answer(engine: ChatEngine, text: str, tool_exec: ToolRunner | None, out: TextIO | None) -> Answer:
    """One user message; with tool_exec, tool calls are run and answered until a plain reply."""
    turn: Turn = engine.send(text)
    results: list[TurnResult] = []
    calls: list[dict[str, Any]] = []
    for _ in range(MAX_TOOL_ROUNDS):
        streamed = False
        for chunk in turn.display():
            streamed = True
            if out:
                out.write(chunk)
                out.flush()
        result = turn.finish()
        results.append(result)
        call = result.reply.tool_call
        if call is None:
            # a malformed tool call is shown as the text the model wrote
            content = result.reply.text if result.reply.problem else engine.conversation.messages[-1]["content"]
            if out and not streamed:
                out.write(content or "")
            return Answer(content or "", calls, results)
        calls.append(engine.conversation.messages[-1]["tool_calls"][0])
        if tool_exec is None:
            return Answer("", calls, results)
        turn = engine.send_observation(tool_exec.run(call))
    raise Glm4LocalError(f"stopped after {MAX_TOOL_ROUNDS} tool calls in a row")


def run_oneshot(engine: ChatEngine, text: str, tool_exec: ToolRunner | None, as_json: bool) -> None:
    out = None if as_json else sys.stdout
    result = answer(engine, text, tool_exec, out)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
        return
    for call in result.tool_calls if tool_exec is None else []:
        function = call["function"]
        sys.stdout.write(f"{function['name']}\n{function['arguments']}")
    sys.stdout.write("\n")

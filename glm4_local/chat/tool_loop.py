"""The one tool loop: model → call → tool → observation → model, until an answer; and its one rule.

The terminal chat, the one-shot answer and the server's tool runs each do the work their own way
(streaming to a screen or to a client, running a tool in a thread, asking the user for a result), but
all of them ask a ToolLoop after every reply what comes next, so a call is run, handed back or refused
by the same rule everywhere:
- a reply that is not a call ends the answer;
- a call nobody here runs is handed back (to the client; the one-shot answer stops there);
- at most `limit` calls are run in one answer: the next one is answered with TOO_MANY_CALLS (so the
  conversation stays well formed) and the answer ends, saying why;
- an interrupted reply ends the answer; a cancelled call is answered with CANCELLED and ends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glm4_local.chat.engine import ChatEngine, Turn, TurnResult
from glm4_local.core.families.replies import ToolCall

Results = Sequence[Mapping[str, Any]]  # a call's tool messages ("content", and "metadata" for built-in tools)

MAX_CHAINED_CALLS = 10  # calls run in one answer before it is stopped (THUDM's demo's bound)
TOO_MANY_CALLS = json.dumps({"error": f"stopped: more than {MAX_CHAINED_CALLS} tool calls in one answer"})
CANCELLED = json.dumps({"error": "cancelled by the user"})


@dataclass(frozen=True)
class Ending:
    """How an answer's loop ended."""

    reason: str  # "answer", "handed back", "too many", "cancelled", "interrupted"
    call: ToolCall | None = None  # the call it ended on (handed back, refused, cancelled)
    observation: str | None = None  # what answers that call in the conversation, when the loop answers it
    stopped: str | None = None  # why the answer ended without a final reply, in words (None: it has one)


class ToolLoop:
    """Ask `next(reply)` after every model reply: the call to run now, or None when the answer is over
    (`ending` says how). `runs(name)`: whether a call of `name` is run here."""

    def __init__(self, runs: Callable[[str], bool], limit: int = MAX_CHAINED_CALLS) -> None:
        self.runs = runs
        self.limit = limit
        self.calls = 0  # calls run so far in this answer
        self.ending: Ending | None = None

    def next(self, call: ToolCall | None, interrupted: bool = False) -> ToolCall | None:
        if self.ending is not None:
            raise RuntimeError("the answer's loop has ended")
        if interrupted:
            self.ending = Ending("interrupted", call, stopped="interrupted")
        elif call is None:
            self.ending = Ending("answer")
        elif not self.runs(call.name):
            self.ending = Ending("handed back", call)
        elif self.calls == self.limit:
            self.ending = Ending("too many", call, TOO_MANY_CALLS, f"more than {self.limit} tool calls in a row")
        else:
            self.calls += 1
            return call
        return None

    def cancelled(self, call: ToolCall) -> Ending:
        """The call was not run after all (the user cancelled it): it is answered as cancelled."""
        self.ending = Ending("cancelled", call, CANCELLED, "tool call cancelled")
        return self.ending

    def converse(self, engine: ChatEngine, turn: Turn, show: Callable[[Turn], TurnResult],
                 run: Callable[[ToolCall], Results | None]) -> Ending:
        """The loop in a chat (the terminal's and the one-shot answer's): `show` streams a reply to its
        end, `run` runs a call (None: it was cancelled). A call the loop refuses or the user cancels is
        answered in the conversation, so it stays well formed; one handed back waits for its result."""
        while True:
            result = show(turn)
            call = self.next(result.reply.tool_call, result.interrupted)
            if call is None:
                break
            results = run(call)
            if results is None:
                self.cancelled(call)
                break
            turn = engine.send_results(results)
        assert self.ending is not None
        if self.ending.observation is not None:
            engine.add_observation(self.ending.observation)
        return self.ending

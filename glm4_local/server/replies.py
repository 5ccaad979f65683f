"""A reply as the client sees it: tokens to text, stop strings, GLM-4's metadata line, tool calls.

Content streams as it is generated (less any tail that could still become a stop string); a reply
whose first line may name a function is held back whole and becomes a tool call only if it names a
known function, its arguments are JSON and the model ended the call as GLM-4 does (or a grammar
forced the call). A call of a known function cut by max_tokens comes back as OpenAI returns one: in
tool_calls, its arguments as far as they were written, with finish_reason "length". Anything else that
looked like a call is given back as text, verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

from glm4_local.chat.runtime import ChatRuntime
from glm4_local.core.families.replies import Reply, ToolCall
from glm4_local.core.llama.decoder import Job
from glm4_local.server.plan import Plan


class StopScanner:
    """Cuts text at the first of the stop strings; holds back a tail that may still start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.buffer = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return text
        self.buffer += text
        found = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buffer, self.hit = self.buffer[: min(found)], "", True
            return out
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.buffer.endswith(s[:n])), default=0)
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.hit else self.buffer), ""
        return out


@dataclass(frozen=True)
class Outcome:
    tail: str  # content still to send
    tool_call: ToolCall | None
    finish_reason: str  # stop | length | tool_calls
    reasoning: str = ""  # a reasoning model's thoughts before the reply (streamed apart, never content)


class ReplyAssembler:
    """Turns one job's tokens into content deltas and, at the end, its outcome."""

    def __init__(self, plan: Plan, runtime: ChatRuntime) -> None:
        self.plan = plan
        self.text_of = runtime.vocab.detokenizer()
        self.format = runtime.vocab.family.replies
        self.call_end = runtime.vocab.special_ids.get(runtime.vocab.family.call_end_token)
        self.text = plan.prefix  # the whole reply as generated, for parsing
        self.reply = None if plan.raw else self.format.stream(plan.tools, plan.prefix)
        self.stops = StopScanner(plan.stop_strings)
        self.fed = 0  # tokens read so far
        self.reasoned = 0  # of them, tokens of a reasoning model's thoughts
        self.counted: int | None = None  # when a stop string ended the reply: the tokens up to its end

    @property
    def stopped(self) -> bool:
        """A stop string was reached: the job should end."""
        return self.stops.hit

    def feed(self, token: int) -> str:
        chunk = self.text_of(token)
        self.fed += 1
        self.text += chunk
        if self.reply is not None and self.reply.reasoning:
            self.reasoned += 1
        shown = chunk if self.reply is None else self.reply.feed(chunk)
        sent = self.stops.feed(shown) if shown else ""
        if self.stops.hit and self.counted is None:
            self.counted = self.fed
        return sent

    def take_reasoning(self) -> str:
        """A reasoning model's thoughts since the last call."""
        return "" if self.reply is None else self.reply.take_reasoning()

    def finish(self, job: Job) -> Outcome:
        if self.reply is None:  # raw text completion
            tail = self.stops.flush()
            return Outcome(tail, None, "length" if job.finish == "length" and not self.stops.hit else "stop")
        tail = self.stops.feed(self.reply.end())
        decided = self._decided(job)
        if self.reply.held:
            if decided.tool_call is not None:
                return Outcome("", decided.tool_call, "tool_calls", decided.reasoning)
            if job.finish == "length" and decided.partial_call is not None:  # as OpenAI: the call so far, cut
                return Outcome("", decided.partial_call, "length", decided.reasoning)
            tail = decided.text  # not a call after all: the model's text, as it wrote it
        tail += self.stops.flush()
        reason = "length" if job.finish == "length" and not self.stops.hit else "stop"
        return Outcome(tail, None, reason, decided.reasoning)

    def _decided(self, job: Job) -> Reply:
        call_ended = job.finish == "stop" and (job.stop_token == self.call_end or self.plan.forced_call)
        return self.format.finish(self.text, self.plan.tools, call_ended, self.plan.prefix)

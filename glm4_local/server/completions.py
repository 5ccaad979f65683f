"""Running a planned request: a whole response, or a stream of server-sent events, for chat or text."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from glm4_local.chat.runtime import ChatRuntime
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.logprobs import TokenLogprob
from glm4_local.server.logprob_shapes import TokenNames
from glm4_local.server.outbox import TokenStream
from glm4_local.server.plan import Plan
from glm4_local.server.protocol import ApiError
from glm4_local.server.replies import Outcome, ReplyAssembler
from glm4_local.server.scheduler import Scheduler
from glm4_local.server.shapes import Envelope, Events, sse, tool_call_object, usage

CONTENT, REASONING, ECHO = "content", "reasoning", "echo"  # the channels of a reply's deltas


async def watch(request: Request, abandon: Callable[[], None], over: Callable[[], bool] = lambda: False) -> None:
    """Call `abandon` when the client of a whole (not streamed) response leaves before it is `over` (a stream
    learns it from its own closing instead). The request's body is read: what the server tells the app next is
    that the client is gone, so this waits for that message (polling for it every 0.25 s was a tenth of the event
    loop's Python in a 4-stream run). Cancelled by the caller once the response is made."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the rest of a body nobody reads
    if not over():
        abandon()


class Run:
    """One request's job, its tokens and its reply."""

    def __init__(self, plan: Plan, runtime: ChatRuntime, scheduler: Scheduler, model_id: str) -> None:
        self.plan = plan
        self.scheduler = scheduler
        self.assembler = ReplyAssembler(plan, runtime)
        self.envelope = Envelope(model_id, "text_completion" if plan.raw else "chat.completion")
        self.job: Job
        self.tokens: TokenStream
        self.job, self.tokens = scheduler.submit(plan, asyncio.get_running_loop())
        self._accounted = False  # its tokens counted in the server's metrics (once: finished or abandoned)
        self.names = None if plan.top_logprobs is None else TokenNames(runtime.vocab)
        self._scored = 0  # of the job's log-probabilities, how many the client was given
        self._offset = 0  # characters of a text completion's choice given so far

    async def deltas(self) -> AsyncIterator[tuple[str, str]]:
        """("content", text) as the reply comes, ("reasoning", text) as a reasoning model thinks; ends at
        the job's end or at a stop string. A text completion that echoes its prompt begins with ("echo",
        prompt) once the prompt is read (its log-probabilities known)."""
        echoed = not self.plan.echo
        async for token in self.tokens:
            if not echoed:
                echoed = True
                yield ECHO, self.plan.echo_text
            text = self.assembler.feed(token)
            if thought := self.assembler.take_reasoning():
                yield REASONING, thought
            if text:
                yield CONTENT, text
            if self.assembler.stopped:
                self.scheduler.cancel(self.job)
                return
        if not echoed:
            yield ECHO, self.plan.echo_text

    # -- log-probabilities --------------------------------------------------------------------------
    def _scores(self, final: bool) -> list[TokenLogprob]:
        """Scores of the tokens behind the text given since the last call: not a reasoning model's thoughts,
        nothing past a stop string; at the end of a text completion, the stop token that ended it too (as
        vLLM gives it: a harness reading the last entry as the generated one needs it there)."""
        fed, counted = self.assembler.fed, self.assembler.counted
        end = counted if counted is not None else len(self.job.logprobs) if final and self.plan.raw else fed
        start = max(self._scored, self.assembler.reasoned)
        self._scored = max(self._scored, end)
        return self.job.logprobs[start:end]

    def logprobs(self, channel: str, text: str, final: bool = False) -> dict[str, Any] | None:
        """The log-probabilities behind the piece `text` of the choice (None when not asked for)."""
        if self.names is None or channel == REASONING:
            return None
        offset, self._offset = self._offset, self._offset + len(text)
        if channel == ECHO:  # the prompt's first token has no score: nothing came before it
            prompt_scores = self.job.prompt_logprobs
            return self.names.legacy([None, *prompt_scores], self.job.prompt[: len(prompt_scores) + 1], offset)
        scored = self._scores(final)
        if self.plan.raw:
            return self.names.legacy(scored, [s.token for s in scored], offset)
        return {"content": self.names.entries(scored), "refusal": None}

    def outcome(self) -> Outcome:
        if self.job.finish == "error":
            status = self.job.error_status
            raise ApiError(status, f"generation failed: {self.job.error}", "server_error" if status >= 500
                           else "invalid_request_error")
        self._account()
        return self.assembler.finish(self.job)

    def _account(self) -> None:
        if not self._accounted:
            self._accounted = True
            self.scheduler.account(self.job)

    def usage(self) -> dict[str, Any]:
        return usage(self.job, self.assembler.counted, self.assembler.reasoned)

    def abandon(self) -> None:
        """The client is gone (or the response ended early): free the slot now; what was generated until
        then is counted as generated (the work was done)."""
        if not self.job.done:
            self.scheduler.cancel(self.job, client_gone=True)
        self._account()

    # -- whole responses ----------------------------------------------------------------------------
    async def collect(self, request: Request) -> tuple[str, Outcome]:
        """The whole reply's content (after its echoed prompt) and outcome (the job stopped if the client leaves
        meanwhile)."""
        watcher = asyncio.create_task(watch(request, self.abandon, lambda: self.job.done))
        try:
            return await self.gather()
        finally:
            watcher.cancel()
            self.abandon()

    async def gather(self) -> tuple[str, Outcome]:
        """The whole reply's content and outcome, as collect() gives them, without watching the client."""
        text = "".join([text async for channel, text in self.deltas() if channel != REASONING])
        outcome = self.outcome()
        return text + outcome.tail, outcome

    def whole_logprobs(self, text: str, outcome: Outcome) -> dict[str, Any] | None:
        """The log-probabilities of a whole choice `text` (none for a reply that became a tool call)."""
        if self.names is None:
            return None
        if not self.plan.raw:
            found = self.logprobs(CONTENT, text, final=True)
            return found if outcome.tool_call is None else {"content": None, "refusal": None}
        echo = self.plan.echo_text if self.plan.echo else ""
        head = self.logprobs(ECHO, echo) if self.plan.echo else None
        rest = self.logprobs(CONTENT, text[len(echo):], final=True)
        assert rest is not None
        return rest if head is None else {key: head[key] + rest[key] for key in rest}

    async def response(self, request: Request) -> dict[str, Any]:
        content, outcome = await self.collect(request)
        logprobs = self.whole_logprobs(content, outcome)
        if self.plan.raw:
            return self.envelope.text(content, outcome.finish_reason, self.usage(), logprobs)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        reason = self.finish_reason(outcome)
        if outcome.tool_call and self.plan.legacy_functions:
            call = tool_call_object(outcome.tool_call)["function"]
            message = {"role": "assistant", "content": None, "function_call": call}
        elif outcome.tool_call:
            message = {"role": "assistant", "content": None, "tool_calls": [tool_call_object(outcome.tool_call)]}
        if outcome.reasoning:  # as llama-server and vLLM return a reasoning model's thoughts
            message["reasoning_content"] = outcome.reasoning
        return self.envelope.chat(message, reason, self.usage(), logprobs)

    # -- streams ------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[bytes]:
        """Server-sent events as OpenAI sends them, ending with [DONE]. Closing it frees the slot."""
        events = Events(self.envelope, self.plan.include_usage)
        piece = self._piece
        try:
            if not self.plan.raw:
                yield events.chunk({"role": "assistant", "content": ""})
            async for channel, text in self.deltas():
                shown = {"reasoning_content": text} if channel == REASONING else piece(text)
                yield events.chunk(shown, logprobs=self.logprobs(channel, text))
            try:
                outcome = self.outcome()
            except ApiError as e:
                yield sse(e.body())
                return
            for delta in self.closing_deltas(outcome):
                text = delta if isinstance(delta, str) else delta.get("content")
                yield events.chunk(delta, logprobs=None if text is None else self.logprobs(CONTENT, text, final=True))
            scored = outcome.tool_call is None and self.names is not None  # what is left: e.g. the stop token
            yield events.chunk(piece(None), self.finish_reason(outcome),
                               logprobs=self.logprobs(CONTENT, "", final=True) if scored else None)
            for event in events.ending(self.usage()):
                yield event
        finally:
            with contextlib.suppress(Exception):
                self.abandon()

    def finish_reason(self, outcome: Outcome) -> str:
        """A request made with the legacy `functions` is told "function_call" where others hear "tool_calls"."""
        legacy = self.plan.legacy_functions and outcome.finish_reason == "tool_calls"
        return "function_call" if legacy else outcome.finish_reason

    def _piece(self, text: str | None) -> dict[str, Any] | str:
        if self.plan.raw:
            return text or ""
        return {"content": text} if text is not None else {}

    def closing_deltas(self, outcome: Outcome) -> list[dict[str, Any] | str]:
        if outcome.tool_call is None:
            return [self._piece(outcome.tail)] if outcome.tail else []
        call = tool_call_object(outcome.tool_call)
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        if self.plan.legacy_functions:
            return [{"function_call": {"name": name, "arguments": ""}}, {"function_call": {"arguments": arguments}}]
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
        return [{"tool_calls": [head]}, {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}]

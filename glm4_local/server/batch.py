"""A text completion of several prompts (`"prompt": [...]`, as lm-evaluation-harness sends them): one job a
prompt, all submitted at once so the decoder runs them together, answered as one response with a choice
each (streamed: each choice's chunks carry its index), their usage summed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from glm4_local.server.completions import CONTENT, Run, watch
from glm4_local.server.plan import Plan
from glm4_local.server.protocol import ApiError
from glm4_local.server.shapes import Envelope, Events, sse
from glm4_local.server.tool_runs import total_usage


class Batch:
    """The runs of one request's prompts; `abandon` stops them all (the client left, the response ended)."""

    def __init__(self, plans: list[Plan], start: Callable[[Plan], Run], model_id: str) -> None:
        self.runs: list[Run] = []
        try:
            for plan in plans:
                self.runs.append(start(plan))  # a full queue refuses the rest: those started are stopped
        except BaseException:
            self.abandon()
            raise
        self.envelope = Envelope(model_id, "text_completion")
        self.include_usage = plans[0].include_usage

    def abandon(self) -> None:
        for run in self.runs:
            run.abandon()

    def usage(self) -> dict[str, Any]:
        return total_usage(self.runs)

    async def response(self, request: Request) -> dict[str, Any]:
        watcher = asyncio.create_task(watch(request, self.abandon, lambda: all(r.job.done for r in self.runs)))
        try:
            choices = []
            for index, run in enumerate(self.runs):
                text, outcome = await run.gather()
                choices.append({"index": index, "text": text, "logprobs": run.whole_logprobs(text, outcome),
                                "finish_reason": outcome.finish_reason})
        finally:
            watcher.cancel()
            self.abandon()
        return self.envelope.texts(choices, self.usage())

    async def events(self) -> AsyncIterator[bytes]:
        """Each choice's chunks in turn (the later ones' tokens wait in their streams meanwhile), then one
        usage chunk (when asked for) and [DONE]."""
        events = Events(self.envelope, self.include_usage)
        try:
            for index, run in enumerate(self.runs):
                async for channel, text in run.deltas():
                    yield events.chunk(text, index=index, logprobs=run.logprobs(channel, text))
                try:
                    outcome = run.outcome()
                except ApiError as e:
                    yield sse(e.body())
                    return
                yield events.chunk(outcome.tail, outcome.finish_reason, index=index,
                                   logprobs=run.logprobs(CONTENT, outcome.tail, final=True))
            for event in events.ending(self.usage()):
                yield event
        finally:
            with contextlib.suppress(Exception):
                self.abandon()

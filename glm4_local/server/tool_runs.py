"""A chat request whose tools the server runs itself: the model, each call it makes run here, the model
again with the results, until its final answer (at most MAX_CHAINED_CALLS calls).

The final answer is an ordinary chat completion, so a client that knows nothing of this still gets it.
The steps travel in an extension any client may ignore (README, "Tools in the server"):
- streaming: a chunk whose delta is `{"glm4_step": STEP}` when a call starts (`"status": "running"`)
  and again when it has its results (`"done"`); the last chunk's delta has `glm4_citations`;
- whole: the message has `glm4_steps: [STEP, ...]` and `glm4_citations`.
A STEP holds `messages`: the assistant call and tool results, exactly as the conversation records them,
which the client appends before the answer so that its next request carries the whole conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from glm4_local.core.families.glm4_replies import PYTHON
from glm4_local.core.families.replies import ToolCall
from glm4_local.core.llama.decoder import Job
from glm4_local.server.completions import Run
from glm4_local.server.plan import Plan
from glm4_local.server.protocol import ApiError, ChatRequest, bad_request
from glm4_local.server.replies import Outcome
from glm4_local.server.shapes import Envelope, sse, tool_call_object, usage
from glm4_local.server.tool_sessions import CONVERSATION_ID, ToolSession, ToolSessions
from glm4_local.tools.observation import CITATION, Observation
from glm4_local.tools.toolbox import MAX_CHAINED_CALLS

STEP = "glm4_step"
STEPS = "glm4_steps"
CITATIONS = "glm4_citations"
MAX_LISTED_FILES = 50
Planner = Callable[[ChatRequest], Plan]
FileUrl = Callable[[str, str], str]  # (conversation, file name) -> the address that serves it


def conversation_of(request: ChatRequest) -> str | None:
    given = request.conversation_id
    if given is not None and not CONVERSATION_ID.fullmatch(given):
        raise bad_request("conversation_id: 1 to 64 letters, digits, '-' or '_'", "conversation_id")
    return given


def total_usage(jobs: list[Job]) -> dict[str, Any]:
    """Every model call of the answer counts, as each would if the client had made it."""
    totals = [usage(job) for job in jobs]
    summed: dict[str, Any] = {key: sum(u[key] for u in totals)
                              for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    for part in ("prompt_tokens_details", "completion_tokens_details"):
        summed[part] = {key: sum(u[part][key] for u in totals) for key in totals[0][part]}
    return summed


class ToolRun:
    """One request run to its final answer; `events()` streams it, `response()` returns it whole."""

    def __init__(self, asked: ChatRequest, plan: Plan, planner: Planner, start: Callable[[Plan], Run],
                 sessions: ToolSessions, model_id: str, file_url: FileUrl) -> None:
        self.asked = asked
        self.plan = plan
        self.planner = planner
        self.start = start
        self.sessions = sessions
        self.conversation = conversation_of(asked)
        self.file_url = file_url
        self.envelope = Envelope(model_id, "chat.completion")
        self.messages: list[Any] = list(asked.messages)
        self.jobs: list[Job] = []
        self.steps: list[dict[str, Any]] = []
        self.current: Run | None = None
        self.session: ToolSession | None = None
        self.tool_running = False
        self.served = {self._served_name(t) for t in plan.tools or [] if sessions.runs(t)}

    @staticmethod
    def _served_name(tool: dict[str, Any]) -> str:
        return tool["function"]["name"] if tool.get("type") == "function" else tool["type"]

    # -- the loop ---------------------------------------------------------------------------------------
    async def turns(self, session: ToolSession) -> AsyncIterator[tuple[str, Any]]:
        """("content", text) as the answer streams, ("step", STEP) as calls run, then ("end", outcome)."""
        plan = self.plan
        while True:
            run = self.current = self.start(plan)
            async for text in run.deltas():
                yield "content", text
            outcome = run.outcome()
            self.jobs.append(run.job)
            call = outcome.tool_call
            if call is None or call.name not in self.served or len(self.steps) == MAX_CHAINED_CALLS:
                yield "end", outcome
                return
            step = self._step_started(call)
            yield "step", step
            self.tool_running = True
            try:
                observations = await run_in_threadpool(session.toolbox.run, call)
            finally:
                self.tool_running = False
            self._step_done(step, call, observations, session)
            yield "step", step
            self.messages += step["messages"]
            follow = self.asked.model_copy(update={"messages": self.messages, "tool_choice": None})
            plan = await run_in_threadpool(self.planner, follow)

    def _step_started(self, call: ToolCall) -> dict[str, Any]:
        call_object = tool_call_object(call)
        step = {"index": len(self.steps), "status": "running", "tool": call.name, "input": call.arguments,
                "call": call_object, "observations": [], "files": [],
                "messages": [{"role": "assistant", "content": None, "tool_calls": [call_object]}]}
        self.steps.append(step)
        return step

    def _step_done(self, step: dict[str, Any], call: ToolCall, observations: list[Observation],
                   session: ToolSession) -> None:
        shown = [self._observation_json(o, session) for o in observations]
        step["status"] = "done"
        step["observations"] = shown
        step["messages"] += [self._tool_message(o, step["call"]["id"], session) for o in observations]
        if call.name == PYTHON:
            step["files"] = self._files(session)

    def _address(self, session: ToolSession, path: Any) -> str:
        return self.file_url(session.conversation, path.name) if self.conversation else ""

    def _observation_json(self, observation: Observation, session: ToolSession) -> dict[str, Any]:
        shown = observation.as_json()
        shown["shown"] = observation.shown or observation.content
        if observation.image is not None:
            shown["image"] = self._address(session, observation.image)
        return shown

    def _tool_message(self, observation: Observation, call_id: str, session: ToolSession) -> dict[str, Any]:
        message = observation.as_message() | {"tool_call_id": call_id}
        if observation.image is not None:  # the page's address, not a path on the server
            message["image"] = self._address(session, observation.image)
        return message

    def _files(self, session: ToolSession) -> list[dict[str, Any]]:
        """What the conversation's /mnt/data holds now (the page offers each for download)."""
        found = sorted(p for p in session.data_dir.iterdir() if p.is_file() and not p.is_symlink())
        return [{"name": p.name, "bytes": p.stat().st_size, "url": self._address(session, p)}
                for p in found[:MAX_LISTED_FILES]]

    def _citations(self, text: str, session: ToolSession) -> dict[str, Any]:
        found = {}
        for ref in dict.fromkeys(m.group(1) for m in CITATION.finditer(text)):
            if (source := session.toolbox.source(ref)) is not None:
                found[ref] = {"title": source.title, "url": source.url}
        return found

    def abandon(self) -> None:
        """The client is gone: stop the model, and the code or page load in progress."""
        if self.current is not None:
            self.current.abandon()
        if self.tool_running and self.session is not None:
            with contextlib.suppress(Exception):
                self.session.toolbox.interrupt()

    # -- responses --------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[bytes]:
        usage_wanted = self.plan.include_usage
        chunk = self.envelope.chunk
        try:
            async with self.sessions.session(self.conversation) as session:
                self.session = session
                yield sse(chunk({"role": "assistant", "content": ""}, with_usage=usage_wanted))
                content = ""
                async for kind, value in self._guarded(session):
                    if kind == "content":
                        content += value
                        yield sse(chunk({"content": value}, with_usage=usage_wanted))
                    elif kind == "step":
                        yield sse(chunk({STEP: value}, with_usage=usage_wanted))
                    elif kind == "error":
                        yield sse(value)
                        return
                    else:
                        run, outcome = self.current, value
                        assert run is not None
                        for delta in run.closing_deltas(outcome):
                            yield sse(chunk(delta, with_usage=usage_wanted))
                        last = {CITATIONS: self._citations(content + outcome.tail, session)}
                        yield sse(chunk(last, run.finish_reason(outcome), with_usage=usage_wanted))
                if usage_wanted:
                    yield sse({**chunk({}), "choices": [], "usage": total_usage(self.jobs)})
                yield sse("[DONE]")
        finally:
            with contextlib.suppress(Exception):
                self.abandon()

    async def _guarded(self, session: ToolSession) -> AsyncIterator[tuple[str, Any]]:
        try:
            async for item in self.turns(session):
                yield item
        except ApiError as e:  # a generation that failed, or a follow-up prompt past the context
            yield "error", e.body()

    async def response(self, request: Request) -> dict[str, Any]:
        watcher = asyncio.create_task(self._watch(request))
        try:
            async with self.sessions.session(self.conversation) as session:
                self.session = session
                content, outcome = "", None
                async for kind, value in self.turns(session):
                    if kind == "content":
                        content += value
                    elif kind == "end":
                        outcome = value
                assert outcome is not None and self.current is not None
                return self._whole(content + outcome.tail, outcome, session)
        finally:
            watcher.cancel()
            self.abandon()

    def _whole(self, content: str, outcome: Outcome, session: ToolSession) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if outcome.tool_call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [tool_call_object(outcome.tool_call)]}
        message |= {STEPS: self.steps, CITATIONS: self._citations(content, session)}
        assert self.current is not None
        body = self.envelope.chat(message, self.current.finish_reason(outcome), self.jobs[-1])
        body["usage"] = total_usage(self.jobs)
        return body

    async def _watch(self, request: Request) -> None:
        while True:
            if await request.is_disconnected():
                self.abandon()
                return
            await asyncio.sleep(0.25)

"""A chat request whose tools the server runs itself: the model, each call it makes run here, the model
again with the results, until its final answer, by the rule every tool loop follows (chat/tool_loop.py).

The final answer is an ordinary chat completion, so a client that knows nothing of this still gets it.
The steps travel in an extension any client may ignore (README, "Tools in the server"):
- streaming: a chunk whose delta is `{"glm4_step": STEP}` when a call starts (`"status": "running"`)
  and again when it has its results (`"done"`); the last chunk's delta has `glm4_citations`;
- whole: the message has `glm4_steps: [STEP, ...]` and `glm4_citations`;
- a conversation that had ended (idle too long) says so: `glm4_notice` in the first chunk's delta, or in
  the whole message;
- an answer the loop stopped (too many calls) ends with the refused call as a last step, answered with
  the error the model would have seen, no final reply, and `glm4_stopped` (why) in the last chunk's
  delta, or in the whole message.
A STEP holds `messages`: the assistant call and tool results, exactly as the conversation records them,
which the client appends before the answer so that its next request carries the whole conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from glm4_local.chat.tool_loop import ToolLoop
from glm4_local.core.families.replies import ToolCall
from glm4_local.server.completions import Run, watch
from glm4_local.server.plan import Plan
from glm4_local.server.protocol import ApiError, ChatRequest, bad_request
from glm4_local.server.replies import Outcome
from glm4_local.server.shapes import Envelope, Events, sse, tool_call_object
from glm4_local.server.tool_sessions import CONVERSATION_ID, ToolSession, ToolSessions, TooManyConversations
from glm4_local.tools.observation import Observation

STEP = "glm4_step"
STEPS = "glm4_steps"
CITATIONS = "glm4_citations"
NOTICE = "glm4_notice"  # why a conversation's tools started anew (it had ended)
STOPPED = "glm4_stopped"  # why the answer ended without a final reply (too many calls)
MAX_LISTED_FILES = 50
TOOL_POLL = 0.25  # seconds between looks at whether the client left while a tool runs
Planner = Callable[[ChatRequest], Plan]
FileUrl = Callable[[str, str], str]  # (conversation, file name) -> the address that serves it


def conversation_of(request: ChatRequest) -> str | None:
    given = request.conversation_id
    if given is not None and not CONVERSATION_ID.fullmatch(given):
        raise bad_request("conversation_id: 1 to 64 letters, digits, '-' or '_'", "conversation_id")
    return given


def total_usage(runs: list[Run]) -> dict[str, Any]:
    """Every model call of the answer counts, as each would if the client had made it."""
    totals = [run.usage() for run in runs]
    summed: dict[str, Any] = {key: sum(u[key] for u in totals)
                              for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    for part in ("prompt_tokens_details", "completion_tokens_details"):
        summed[part] = {key: sum(u[part][key] for u in totals) for key in totals[0][part]}
    return summed


class ToolRun:
    """One request run to its final answer: `open()` takes the conversation's tools (before any response
    starts: a server with no room answers 503), then `events()` streams it or `response()` returns it
    whole; `release()` gives the tools back, however the response ended."""

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
        self.runs: list[Run] = []
        self.steps: list[dict[str, Any]] = []
        self.current: Run | None = None
        self.session: ToolSession | None = None
        self.held = contextlib.AsyncExitStack()
        self.abandoned = False
        self.notice: str | None = None  # the conversation had ended: what the client is told
        self.stopped: str | None = None  # the loop refused a call: why the answer has no final reply
        self.served = {self._served_name(t) for t in plan.tools or [] if sessions.runs(t)}

    @staticmethod
    def _served_name(tool: dict[str, Any]) -> str:
        return tool["function"]["name"] if tool.get("type") == "function" else tool["type"]

    async def open(self) -> None:
        try:
            self.session = await self.held.enter_async_context(self.sessions.session(self.conversation))
            self.notice = self.session.take_notice()
        except TooManyConversations as e:
            raise ApiError(503, str(e), "server_error", code="too_many_conversations",
                           headers={"Retry-After": str(int(e.retry_after + 0.999))}) from None

    async def release(self) -> None:
        """Give the conversation's tools back (once the tool in progress, if any, has stopped)."""
        self.abandon()
        with anyio.CancelScope(shield=True):
            await self.held.aclose()

    # -- the loop ---------------------------------------------------------------------------------------
    async def turns(self) -> AsyncIterator[tuple[str, Any]]:
        """("content", text) as the answer streams (and ("reasoning", text) as a reasoning model thinks),
        ("step", STEP) as calls run, then ("end", outcome)."""
        session = self.session
        assert session is not None
        plan = self.plan
        loop = ToolLoop(lambda name: name in self.served)
        while True:
            run = self.current = self.start(plan)
            async for channel, text in run.deltas():
                yield channel, text
            outcome = run.outcome()
            self.runs.append(run)
            call = loop.next(outcome.tool_call)
            if call is None:
                break
            step = self._step_started(call)
            yield "step", step
            observations = await self._run_tool(session, call)
            if self.abandoned:
                return
            self._step_done(step, call, observations, session)
            yield "step", step
            self.messages += step["messages"]
            follow = self.asked.model_copy(update={"messages": self.messages, "tool_choice": None})
            plan = await run_in_threadpool(self.planner, follow)
        ending = loop.ending
        assert ending is not None
        if ending.call is not None and ending.observation is not None:  # a call refused: answered, not handed back
            step = self._step_started(ending.call)
            self._step_done(step, ending.call, [Observation("", ending.observation)], session)
            yield "step", step
            self.stopped = ending.stopped
            outcome = Outcome(outcome.tail, None, "stop")
        yield "end", outcome

    async def _run_tool(self, session: ToolSession, call: ToolCall) -> list[Observation]:
        """The call's observations. When the client leaves, the tool is stopped and waited for: the
        conversation is given back only once nothing of this request runs in it. The stop is asked for
        again until the tool returns (it may not have begun the call when first asked)."""
        running = asyncio.ensure_future(run_in_threadpool(session.toolbox.run, call))
        try:
            while not (await asyncio.wait({running}, timeout=TOOL_POLL))[0]:
                if self.abandoned:
                    session.toolbox.interrupt()
            return running.result()
        except asyncio.CancelledError:
            self.abandoned = True
            with anyio.CancelScope(shield=True):
                while not running.done():
                    session.toolbox.interrupt()
                    await asyncio.wait({running}, timeout=TOOL_POLL)
            raise

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
        if session.toolbox.names.kind(call.name) == "code":
            step["files"] = self._files(session)

    def _address(self, session: ToolSession, name: str) -> str:
        return self.file_url(session.conversation, name) if self.conversation else ""

    def _observation_json(self, observation: Observation, session: ToolSession) -> dict[str, Any]:
        shown = observation.as_json()
        shown["shown"] = observation.shown or observation.content
        if observation.image is not None:
            shown["image"] = self._address(session, observation.image.name)
        return shown

    def _tool_message(self, observation: Observation, call_id: str, session: ToolSession) -> dict[str, Any]:
        message = observation.as_message() | {"tool_call_id": call_id}
        if observation.image is not None:  # the page's address, not a path on the server
            message["image"] = self._address(session, observation.image.name)
        return message

    def _files(self, session: ToolSession) -> list[dict[str, Any]]:
        """What the conversation's /mnt/data holds now (the page offers each for download): its regular
        files, never through a link the code left."""
        found: list[tuple[str, int]] = []
        with contextlib.suppress(OSError), os.scandir(session.data_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):
                        found.append((entry.name, info.st_size))
        return [{"name": name, "bytes": size, "url": self._address(session, name)}
                for name, size in sorted(found)[:MAX_LISTED_FILES]]

    def _citations(self, text: str, session: ToolSession) -> dict[str, Any]:
        return {ref: {"title": source.title, "url": source.url} for ref, source in session.toolbox.cited(text).items()}

    def abandon(self) -> None:
        """The client is gone (or the response ended): stop the model; a tool in progress is stopped by
        the loop that waits for it."""
        self.abandoned = True
        if self.current is not None:
            self.current.abandon()

    # -- responses --------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[bytes]:
        events = Events(self.envelope, self.plan.include_usage)
        session = self.session
        assert session is not None
        try:
            yield events.chunk({"role": "assistant", "content": ""})
            if self.notice:
                yield events.chunk({NOTICE: self.notice})
            content = ""
            async for kind, value in self._guarded():
                if kind == "content":
                    content += value
                    yield events.chunk({"content": value})
                elif kind == "reasoning":
                    yield events.chunk({"reasoning_content": value})
                elif kind == "step":
                    yield events.chunk({STEP: value})
                elif kind == "error":
                    yield sse(value)
                    return
                else:
                    run, outcome = self.current, value
                    assert run is not None
                    for delta in run.closing_deltas(outcome):
                        yield events.chunk(delta)
                    last = {CITATIONS: self._citations(content + outcome.tail, session)}
                    if self.stopped:
                        last[STOPPED] = self.stopped
                    yield events.chunk(last, run.finish_reason(outcome))
            for event in events.ending(total_usage(self.runs)):
                yield event
        finally:
            await self.release()

    async def _guarded(self) -> AsyncIterator[tuple[str, Any]]:
        try:
            async for item in self.turns():
                yield item
        except ApiError as e:  # a generation that failed, or a follow-up prompt past the context
            yield "error", e.body()

    async def response(self, request: Request) -> dict[str, Any]:
        watcher = asyncio.create_task(watch(request, self.abandon))
        session = self.session
        assert session is not None
        try:
            content, outcome = "", None
            async for kind, value in self.turns():
                if kind == "content":
                    content += value
                elif kind == "end":
                    outcome = value
            if outcome is None:  # the client left while a tool ran: nobody to answer
                raise ApiError(499, "the client went away", code="client_gone")
            return self._whole(content + outcome.tail, outcome, session)
        finally:
            watcher.cancel()
            await self.release()

    def _whole(self, content: str, outcome: Outcome, session: ToolSession) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if outcome.tool_call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [tool_call_object(outcome.tool_call)]}
        if outcome.reasoning:  # the final answer's thoughts (each step's are in its stream)
            message["reasoning_content"] = outcome.reasoning
        message |= {STEPS: self.steps, CITATIONS: self._citations(content, session)}
        if self.notice:
            message[NOTICE] = self.notice
        if self.stopped:
            message[STOPPED] = self.stopped
        assert self.current is not None
        return self.envelope.chat(message, self.current.finish_reason(outcome), total_usage(self.runs))

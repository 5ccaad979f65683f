"""The chat engine: a conversation, the model's template and the runtime, turn by turn (no UI here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from glm4_local.chat.runtime import ChatRuntime, Generation, Timings
from glm4_local.chat.session import Autosave, Conversation, Message, turns, user_message
from glm4_local.chat.template import ChatTemplate
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.replies import Reply
from glm4_local.core.llama.sampling import SamplerSettings


@dataclass(frozen=True)
class ChatSettings:
    sampling: SamplerSettings
    max_tokens: int | None = None

    def reply_reserve(self, n_ctx: int) -> int:
        """Context kept free for the reply when fitting the prompt."""
        return min(self.max_tokens or 1024, n_ctx // 2)


@dataclass
class TurnResult:
    reply: Reply
    stopped_by: str | None
    interrupted: bool
    timings: Timings
    dropped_turns: int = 0


@dataclass
class Turn:
    """A reply in progress: iterate `display()` for what to show; then call finish()."""

    generation: Generation
    engine: ChatEngine
    dropped_turns: int
    prompt_tokens: int = 0
    generated: list[str] = field(default_factory=list)
    on_reasoning: Callable[[str], None] | None = None  # hears a reasoning model's thoughts as they stream

    def display(self) -> Iterator[str]:
        """Streamed text to show: the answer without GLM-4's leading metadata line.

        Text before the first newline is metadata (a tool name, or empty for an answer); a tool call
        is shown when complete, so only an answer's content streams.
        """
        engine = self.engine
        reply = engine.runtime.vocab.family.replies.stream(engine.conversation.tools, engine.template.reply_head)
        for chunk in self.generation.chunks:
            self.generated.append(chunk)
            shown = reply.feed(chunk)
            if self.on_reasoning and (thought := reply.take_reasoning()):
                self.on_reasoning(thought)
            if shown:
                yield shown
        rest = reply.end()
        if self.on_reasoning and (thought := reply.take_reasoning()):
            self.on_reasoning(thought)
        if rest:
            yield rest

    def finish(self, interrupted: bool = False) -> TurnResult:
        """Record the reply in the conversation (a call only if the model ended it as one)."""
        return self.engine.record(self, interrupted)


class ChatEngine:
    """A conversation with one loaded model. Front-ends edit the conversation through it and stream
    replies from it; every change is autosaved (when an Autosave is given)."""

    def __init__(self, runtime: ChatRuntime, template: ChatTemplate, conversation: Conversation,
                 settings: ChatSettings, autosave: Autosave | None = None,
                 notify: Callable[[str], None] = lambda message: None) -> None:
        self.runtime = runtime
        self.template = template
        self.conversation = conversation
        self.settings = settings
        self.autosave = autosave
        self.notify = notify
        self.dropped_turns = 0  # oldest turns left out of the prompt; only grows, so the cache stays valid
        self.last: TurnResult | None = None

    # -- conversation edits -------------------------------------------------------------------
    def reset(self) -> None:
        system = self.conversation.system_prompt
        self.conversation.messages.clear()
        self.conversation.set_system(system)
        self.dropped_turns = 0
        self.save()

    def set_system(self, text: str | None) -> None:
        self.conversation.set_system(text)
        self.save()

    def replace_conversation(self, loaded: Conversation) -> None:
        """Continue another conversation (its tools, else the current ones)."""
        self.conversation.messages[:] = loaded.messages
        self.conversation.tools = loaded.tools or self.conversation.tools
        self.dropped_turns = 0
        self.save()

    def undo(self) -> bool:
        """Remove the last turn (the user's message and everything after it)."""
        head, groups = turns(self.conversation.messages)
        if not groups:
            return False
        self.conversation.messages[:] = head + [m for g in groups[:-1] for m in g]
        self.dropped_turns = min(self.dropped_turns, max(0, len(groups) - 2))
        self.save()
        return True

    def save(self) -> None:
        if self.autosave:
            self.autosave.save(self.conversation)

    # -- turns -------------------------------------------------------------------------------
    def answer(self) -> Turn:
        """Reply to the conversation as it stands (its last message is the user's or a tool's)."""
        tokens, dropped = self._fitted_prompt()
        s = self.settings
        return Turn(self.runtime.generate(tokens, s.sampling, s.max_tokens), self, dropped, len(tokens))

    def send(self, text: str, documents: Sequence[Mapping[str, str]] = ()) -> Turn:
        """The user's message (and the documents that go with it, {"name", "text"} each), answered."""
        self.conversation.messages.append(user_message(text, documents))
        self.save()
        return self.answer()

    def add_observation(self, result: str) -> None:
        """Answer the last tool call without asking for a reply (a cancelled or refused call)."""
        self.add_results([{"content": result}])

    def add_results(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Answer the last tool call with its results: tool messages' fields ("content", and "metadata" for
        GLM-4's built-in tools). A result longer than the context has room for is cut to what fits, with
        a note the model reads."""
        call_id = self._unanswered_call_id()
        for result in results:
            message: dict[str, Any] = {**result, "role": "tool"}
            message["content"] = self._fitted_observation(str(result.get("content") or ""), result.get("metadata"))
            if call_id:
                message["tool_call_id"] = call_id
            self.conversation.messages.append(message)
        self.save()

    def _fitted_observation(self, result: str, metadata: str | None = None) -> str:
        budget = self._prompt_budget()
        empty = {"role": "tool", "content": "", **({"metadata": metadata} if metadata else {})}
        empty_tokens = len(self.prompt_tokens([*self._kept_messages(), empty]))
        vocab = self.runtime.vocab
        tokens = vocab.text_tokens(result)
        room = budget - empty_tokens
        if len(tokens) <= room:
            return result
        note = f"\n[output cut: the first {{kept}} of {len(tokens):,} tokens fit the context]"
        shown = max(0, room - len(vocab.text_tokens(note.format(kept=room))) - 2)
        self.notify(f"the tool's output ({len(tokens):,} tokens) was cut to the {shown:,} that fit the context")
        return vocab.text_of(tokens[:shown]) + note.format(kept=f"{shown:,}")

    def pending_call(self) -> bool:
        """Whether the conversation ends with a tool call nobody has answered."""
        last = self.conversation.messages[-1] if self.conversation.messages else {}
        return last.get("role") == "assistant" and bool(last.get("tool_calls"))

    def _unanswered_call_id(self) -> str | None:
        last_call = next((m for m in reversed(self.conversation.messages) if m.get("role") != "tool"), {})
        if last_call.get("role") != "assistant" or not last_call.get("tool_calls"):
            return None
        call = last_call["tool_calls"][-1]
        return call.get("id") if isinstance(call, dict) else None

    def set_sampling(self, **changes: object) -> None:
        """Change sampling for the next replies: temperature, top_p, ..., seed, or max_tokens."""
        own = {k: changes.pop(k) for k in ("max_tokens",) if k in changes}
        sampling = replace(self.settings.sampling, **changes)  # type: ignore[arg-type]
        self.settings = replace(self.settings, sampling=sampling, **own)  # type: ignore[arg-type]

    def send_observation(self, result: str) -> Turn:
        self.add_observation(result)
        return self.answer()

    def send_results(self, results: Sequence[Mapping[str, Any]]) -> Turn:
        self.add_results(results)
        return self.answer()

    def retry(self) -> Turn | None:
        """Drop the last reply (and any tool exchange after the last user message) and answer again."""
        messages = self.conversation.messages
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            return None
        del messages[last_user + 1 :]
        self.save()
        return self.answer()

    def room(self) -> int:
        """Tokens the next user message may have (the reply's reserve kept free)."""
        empty_message = {"role": "user", "content": ""}
        return self._prompt_budget() - len(self.prompt_tokens([*self._kept_messages(), empty_message]))

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        return self.runtime.vocab.prompt(self.template, messages, self.conversation.tools)

    def _prompt_budget(self) -> int:
        """Prompt tokens the context has room for, with room kept for the reply."""
        return self.runtime.n_ctx - self.settings.reply_reserve(self.runtime.n_ctx)

    def _kept_messages(self) -> list[Message]:
        """The conversation less the oldest turns already left out of the prompt (system and tools stay)."""
        head, groups = turns(self.conversation.messages)
        return head + [m for g in groups[self.dropped_turns :] for m in g]

    def _fitted_prompt(self) -> tuple[list[int], int]:
        """Prompt tokens for the conversation, leaving out the oldest turns when it would not fit."""
        budget = self._prompt_budget()
        _, groups = turns(self.conversation.messages)
        newly_dropped = 0
        while True:
            tokens = self.prompt_tokens(self._kept_messages())
            # drop well below the limit when dropping at all, so the next turns reuse the cache
            target = budget if newly_dropped == 0 else budget * 3 // 4
            if len(tokens) <= target or len(groups) - self.dropped_turns <= 1:
                break
            self.dropped_turns += 1
            newly_dropped += 1
        if len(tokens) > budget:
            self.conversation.messages.pop()  # the message that cannot fit is not kept
            self.save()
            raise Glm4LocalError(f"this message needs {len(tokens)} tokens of context, more than the "
                                 f"{budget} available; shorten it or use a larger context")
        if newly_dropped:
            self.notify(f"context full: left out the {newly_dropped} oldest turn(s) "
                        f"({self.dropped_turns} in all); the system prompt and tools are kept")
        return tokens, newly_dropped

    def record(self, turn: Turn, interrupted: bool) -> TurnResult:
        """Add a finished (or interrupted) turn's reply to the conversation; see Turn.finish."""
        stopped_by = turn.generation.stopped_by
        call_ended = not interrupted and stopped_by == self.runtime.vocab.family.call_end_token
        head = self.template.reply_head  # what the prompt already wrote of the reply (GLM-Z1: "\n<think>")
        reply = self.runtime.vocab.family.replies.finish(head + "".join(turn.generated), self.conversation.tools,
                                                         call_ended, head)
        message = reply.as_message()
        if interrupted:
            message["interrupted"] = True
        self.conversation.messages.append(message)
        self.save()
        self.last = TurnResult(reply, stopped_by, interrupted, turn.generation.timings, turn.dropped_turns)
        return self.last

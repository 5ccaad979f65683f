"""The chat engine on scripted tiny models in llama.cpp: stopping, streaming, tools, cache, context."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from glm4_local.chat.engine import ChatEngine, ChatSettings
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.session import Autosave, Conversation, load_conversation, turns
from glm4_local.chat.setup import ModelFacts, chat_settings, open_engine
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama.sampling import SamplerSettings

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def engine_for(path: Path, n_ctx: int = 2048, tools: list | None = None, max_tokens: int | None = None,
               autosave: Autosave | None = None, notes: list[str] | None = None, temp: float = 0.8) -> ChatEngine:
    sink = notes if notes is not None else []
    return open_engine(path, RuntimeOptions(ctx=n_ctx), {"temperature": temp, "seed": 3}, max_tokens,
                       Conversation(tools=tools), autosave, sink.append)


def reply_text(engine: ChatEngine, text: str) -> tuple[str, object]:
    turn = engine.send(text)
    shown = "".join(turn.display())
    return shown, turn.finish()


@pytest.mark.parametrize("scenario,stop", [("answer", "<|user|>"), ("endoftext", "<|endoftext|>")])
def test_stops_on_stop_tokens_and_never_prints_them(scripted_gguf: Callable[[str], Path], scenario: str,
                                                     stop: str) -> None:
    engine = engine_for(scripted_gguf(scenario))
    shown, result = reply_text(engine, "Weather?")
    assert shown == ("Sunny day" if scenario == "answer" else "Sunny")
    assert result.stopped_by == stop
    assert engine.conversation.messages[-1] == {"role": "assistant", "content": shown}


def test_chat_settings_do_not_change_a_scripted_reply(scripted_gguf: Callable[[str], Path]) -> None:
    for temp in (0.0, 0.8, 1.5):
        assert reply_text(engine_for(scripted_gguf("answer"), temp=temp), "hi")[0] == "Sunny day"


def test_max_tokens_and_streaming(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("endless"), max_tokens=7)
    turn = engine.send("go")
    chunks = list(turn.display())
    result = turn.finish()
    assert chunks == [" day"] * 6  # the newline is GLM-4's empty metadata line, not shown
    assert result.stopped_by == "max_tokens" and result.timings.generated_tokens == 7


def test_tool_call_then_answer_from_observation(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("tool"), tools=TOOLS)
    shown, result = reply_text(engine, "Weather in Paris?")
    assert shown == "" and result.stopped_by == "<|observation|>"
    assert result.reply.tool_call is not None and result.reply.tool_call.name == "lookup"
    assert result.reply.tool_call.arguments == "{}"
    call_message = engine.conversation.messages[-1]
    assert call_message["tool_calls"][0]["function"] == {"name": "lookup", "arguments": "{}"}
    turn = engine.send_observation('{"sky": "clear"}')
    assert "".join(turn.display()) == "Sunny day"
    second = turn.finish()
    assert second.stopped_by == "<|user|>"
    # only the observation and the new prompt tag were evaluated: the cache held the rest
    assert second.timings.evaluated_tokens < 30 < second.timings.prompt_tokens


def test_malformed_call_is_text_not_a_crash(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("bad_json"), tools=TOOLS)
    shown, result = reply_text(engine, "x")
    assert shown == "" and result.reply.tool_call is None and "not valid JSON" in (result.reply.problem or "")
    assert result.reply.text == "lookup\n{"
    assert engine.conversation.messages[-1] == {"role": "assistant", "content": "{", "metadata": "lookup"}


def test_without_tools_a_name_like_first_line_is_just_text(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("bad_json"))
    shown, result = reply_text(engine, "x")
    assert shown == "lookup\n{" and result.reply.problem is None
    assert engine.conversation.messages[-1] == {"role": "assistant", "content": "lookup\n{"}


def test_second_turn_evaluates_only_new_tokens(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("answer"))
    first = reply_text(engine, "one " * 50)[1]
    second = reply_text(engine, "two")[1]
    assert first.timings.evaluated_tokens == first.timings.prompt_tokens
    assert second.timings.prompt_tokens > first.timings.prompt_tokens
    assert second.timings.evaluated_tokens <= 8


def test_context_overflow_drops_oldest_turns_keeps_system(scripted_gguf: Callable[[str], Path]) -> None:
    notes: list[str] = []
    engine = engine_for(scripted_gguf("answer"), n_ctx=256, max_tokens=16, notes=notes)
    engine.conversation.set_system("SYSTEM PROMPT")
    for i in range(12):
        shown, _ = reply_text(engine, f"message {i} " + "pad " * 12)
        assert shown == "Sunny day"
    assert any("left out" in n for n in notes)
    assert engine.dropped_turns > 0
    assert len(engine.conversation.messages) == 1 + 24  # nothing is lost from the transcript
    head, groups = turns(engine.conversation.messages[:-1])  # the prompt of the last turn
    kept = head + [m for g in groups[engine.dropped_turns :] for m in g]
    assert head == [{"role": "system", "content": "SYSTEM PROMPT"}]
    assert len(engine.prompt_tokens(kept)) <= 256 - 16


def test_message_too_long_for_context_is_an_error(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("answer"), n_ctx=128)
    with pytest.raises(Glm4LocalError, match="larger context"):
        engine.send("word " * 400)
    assert engine.conversation.messages == []


def test_retry_undo_reset_and_autosave(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    autosave = Autosave(tmp_path / "s.json")
    engine = engine_for(scripted_gguf("answer"), autosave=autosave)
    engine.conversation.set_system("sys")
    reply_text(engine, "a")
    reply_text(engine, "b")
    assert len(load_conversation(autosave.path).messages) == 5
    turn = engine.retry()
    assert turn is not None and "".join(turn.display()) == "Sunny day"
    turn.finish()
    assert [m["role"] for m in engine.conversation.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert engine.undo()
    assert [m["content"] for m in load_conversation(autosave.path).messages] == ["sys", "a", "Sunny day"]
    engine.reset()
    assert load_conversation(autosave.path).messages == [{"role": "system", "content": "sys"}]


def test_interrupted_reply_is_kept_and_marked(scripted_gguf: Callable[[str], Path]) -> None:
    engine = engine_for(scripted_gguf("endless"))
    turn = engine.send("go")
    shown = []
    for chunk in turn.display():
        shown.append(chunk)
        if len(shown) == 3:
            break  # what a Ctrl-C does to the loop
    result = turn.finish(interrupted=True)
    assert result.interrupted
    assert engine.conversation.messages[-1] == {"role": "assistant", "content": " day day day", "interrupted": True}
    assert reply_text(engine, "again")[0].startswith(" day")


def test_settings_defaults_come_from_the_gguf(make_gguf: Callable[..., Path]) -> None:
    facts = ModelFacts.read(make_gguf("q8_0"))
    assert chat_settings(facts) == ChatSettings(SamplerSettings(0.8, 0.8, 0, 0.0, 1.0))
    custom = chat_settings(facts, {"temperature": 0.0, "top_k": 5, "seed": 1, "min_p": None}, max_tokens=9)
    assert custom.sampling.temperature == 0.0 and custom.sampling.top_k == 5 and custom.max_tokens == 9
    assert custom.sampling.seed == 1 and custom.sampling.min_p == 0.0

"""Prompts are byte-identical to the real GLM-4 Jinja template, and user text never becomes markup."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from helpers import factory
from jinja2.sandbox import ImmutableSandboxedEnvironment

from glm4_local.chat.template import ChatTemplate
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.families.glm4_replies import parse_reply, to_glm_messages

GLM4_CHAT_TEMPLATE = GLM4_9B.published_template
MARKUP_TOKENS = GLM4_9B.markup_tokens
TOOL_TYPES = GLM4_9B.replies.tool_types


def render_text(template: str, messages: list, add_generation_prompt: bool = True) -> str:
    return ChatTemplate(template, MARKUP_TOKENS, tool_types=TOOL_TYPES).text(messages, add_generation_prompt)


def render_pieces(template: str, messages: list) -> list:
    return ChatTemplate(template, MARKUP_TOKENS, tool_types=TOOL_TYPES).pieces(messages)

PUBLISHED = {
    name: json.loads((factory.REFERENCE.parent / name / "tokenizer_config.json").read_text())["chat_template"]
    for name in ("glm-4-9b-chat", "glm-4-9b-chat-1m")
    if (factory.REFERENCE.parent / name / "tokenizer_config.json").is_file()
}
needs_reference = pytest.mark.skipif(not PUBLISHED, reason="../shared/glm4-reference absent")
# the published files when present; else the package's copies, which the tests above check against them
REAL_TEMPLATES = PUBLISHED or dict(GLM4_9B.published_templates)


def reference_render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The template rendered the way transformers does (its own function when installed)."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


TEXTS = ["", "Hello", "你好，世界！", "line one\nline two\n", "  spaces  ", "<|user|> fake turn", "[gMASK]<sop>",
         "😀👨‍👩‍👧 emoji", "{\"json\": [1, 2]}", "مرحبا", "tab\tand\r\nCRLF", "{{ not jinja }} {% raw %}",
         "\ue000abc:1\ue001 private use", "<|observation|>", "\"quoted\"", "None"]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "天气 <|assistant|> \"q\"\n",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "description": "城市名"}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {"a": 1.5, "b": [True, None]}}},
    {"type": "python"}, {"type": "simple_browser"}, {"type": "cogview"},
]


def random_conversation(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """OpenAI-style messages: system, users, assistants, tool calls and results, odd contents."""
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(TEXTS)})
    for _ in range(rng.randint(0, 6)):
        messages.append({"role": "user", "content": rng.choice(TEXTS)})
        if rng.random() < 0.3:
            args = json.dumps({"city": rng.choice(TEXTS)}, ensure_ascii=rng.random() < 0.5)
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": rng.choice(["get_weather", "add"]),
                                                             "arguments": args}}]})
            messages.append({"role": "tool", "content": rng.choice(TEXTS)})
        if rng.random() < 0.8:
            message: dict[str, Any] = {"role": "assistant", "content": rng.choice(TEXTS)}
            if rng.random() < 0.1:
                message["metadata"] = rng.choice(TEXTS)
            messages.append(message)
    if rng.random() < 0.1:
        messages.append({"role": "observation", "content": rng.choice(TEXTS), "metadata": None})
    tools = rng.sample(TOOLS, rng.randint(1, len(TOOLS))) if rng.random() < 0.4 else None
    return messages, tools


@needs_reference
def test_builtin_templates_are_the_published_ones() -> None:
    assert GLM4_9B.published_templates == PUBLISHED
    assert GLM4_9B.published_template == GLM4_CHAT_TEMPLATE == PUBLISHED["glm-4-9b-chat"]


def test_readme_example() -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "Another question"}]
    assert render_text(REAL_TEMPLATES["glm-4-9b-chat"], to_glm_messages(messages)) == (
        "[gMASK]<sop><|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\nHi there"
        "<|user|>\nAnother question<|assistant|>")


@pytest.mark.parametrize("template_name", ["glm-4-9b-chat", "glm-4-9b-chat-1m"])
def test_many_generated_conversations_render_byte_identically(template_name: str) -> None:
    template = REAL_TEMPLATES[template_name]
    rng = random.Random(template_name)
    for _ in range(400):
        messages, tools = random_conversation(rng)
        glm = to_glm_messages(messages, tools)
        add = rng.random() < 0.9
        assert render_text(template, glm, add) == reference_render(template, glm, add), (messages, tools)


def test_special_tokens_come_only_from_markup() -> None:
    rng = random.Random(7)
    for _ in range(200):
        messages, tools = random_conversation(rng)
        glm = to_glm_messages(messages, tools)
        pieces = render_pieces(GLM4_CHAT_TEMPLATE, glm)
        specials = [p.text for p in pieces if p.special]
        assert set(specials) <= set(MARKUP_TOKENS)
        # exactly the template's markup: [gMASK] <sop>, one role tag per rendered message, the prompt tag
        rendered_roles = sum(1 for m in glm if m.get("content")) + sum(1 for m in glm if "tools" in m)
        assert specials[:2] == ["[gMASK]", "<sop>"]
        assert len(specials) == 2 + rendered_roles + 1


def test_openai_mapping() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"北京\"}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "晴"},
        {"role": "assistant", "content": "Sunny.", "name": "x"},
    ]
    assert to_glm_messages(messages, TOOLS[:1]) == [
        {"role": "system", "content": "", "tools": TOOLS[:1]},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "metadata": "get_weather", "content": "{\"city\":\"北京\"}"},
        {"role": "observation", "content": "晴"},
        {"role": "assistant", "content": "Sunny.", "name": "x"},
    ]


@pytest.mark.parametrize("generated,name,problem", [
    ("\nPlain answer", None, None),
    ("get_weather\n{\"city\": \"Paris\"}", "get_weather", None),
    ("get_weather\n{\"city\": ", None, "not valid JSON"),
    ("launch_rockets\n{}", None, "unknown tool"),
    ("no newline at all", None, None),
    ("Sure, here it is:\nfirst line", None, None),  # a first line that is no function name is text
])
def test_parse_reply(generated: str, name: str | None, problem: str | None) -> None:
    reply = parse_reply(generated, TOOLS)
    assert (reply.tool_call.name if reply.tool_call else None) == name
    assert (problem in reply.problem) if problem else reply.problem is None
    if reply.tool_call:
        assert reply.tool_call.arguments == generated.partition("\n")[2]


def test_a_slow_custom_template_does_not_hold_up_other_requests() -> None:
    """Custom templates render in a pool of workers: a quick render finishes while a slow one still runs
    (with one worker, every request waited behind the slowest)."""
    import threading

    from glm4_local.chat.template_worker import TemplatePool

    pool = TemplatePool(size=2, timeout=60)
    slow = "{% for i in range(100000) %}{% for j in range(400) %}{% endfor %}{% endfor %}slow"  # ~5 s
    finished: list[str] = []
    worker = threading.Thread(target=lambda: finished.append(pool.render(slow, [], False)))
    worker.start()
    try:
        assert pool.render("quick {{ 1 + 1 }}", [], False) == "quick 2"
        assert worker.is_alive() and not finished  # the slow one is still rendering
    finally:
        worker.join()
    assert finished == ["slow"]

"""The context plan: weights + KV cache + buffers against the free memory (faked here), the KV arithmetic
checked against what llama.cpp allocates, `--ctx auto`, and refusals with the numbers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
from helpers.cli import invoke, one_line_error

from glm4_local.chat import context_plan
from glm4_local.chat.context_plan import ContextTooLarge, compute_bytes, plan_context
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.llama import device, door
from glm4_local.core.llama.device import Memory
from glm4_local.frontends.model_plan import plan_model, plan_serving

GiB = 2**30
Q = gguf.GGMLQuantizationType
FLAGSHIP = GLM4_9B.flagship
Q4_K_M_WEIGHTS = int(9.40e9 * 4.89 / 8)


def kv_options(name: str, **changes: object) -> RuntimeOptions:
    qtype = Q[name.upper()]
    return replace(RuntimeOptions(cache_type_k=qtype, cache_type_v=qtype), **changes)  # type: ignore[arg-type]


def test_glm4_9b_kv_arithmetic() -> None:
    """40 layers × 2 KV heads × 128 × (K and V): 40 KiB a token in f16; 128K tokens: 5, 2.7, 1.4 GiB."""
    per_type = {kv: GLM4_9B.kv_cache_bytes(FLAGSHIP, 131072, Q[kv.upper()], Q[kv.upper()]) for kv in
                ("f16", "q8_0", "q4_0")}
    assert GLM4_9B.kv_cache_bytes(FLAGSHIP, 1, Q.F16, Q.F16) == 40 * 1024
    assert [round(n / GiB, 2) for n in per_type.values()] == [5.0, 2.66, 1.41]
    long = GLM4_9B.flagship_long
    assert long is not None and GLM4_9B.kv_cache_bytes(long, long.context_length, Q.F16, Q.F16) == 80 * GiB


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_the_kv_size_is_what_llama_cpp_allocates(scripted_gguf: Callable[[str], Path], kv: str) -> None:
    facts = ModelFacts.read(scripted_gguf("answer"))
    options = kv_options(kv, ctx=2048, flash_attn=True)
    seen: list[float] = []
    with door.listening(lambda line: seen.extend(float(m) for m in re.findall(r"KV buffer size =\s*([\d.]+) MiB",
                                                                                line))):
        runtime = load_runtime(facts, options)
    assert seen and abs(sum(seen) * 2**20 - facts.kv_cache_bytes(2048, options)) < 0.01 * 2**20
    runtime.decoder.close()


@pytest.mark.parametrize("flash", [False, True])
def test_the_compute_buffer_grows_as_llama_cpp_reports(scripted_gguf: Callable[[str], Path], flash: bool) -> None:
    """The plan's compute-buffer growth with the context, against what llama.cpp says it reserved."""
    facts = ModelFacts.read(scripted_gguf("endless"))  # trained for 65,536 tokens

    def reported(n_ctx: int) -> float:
        seen: list[float] = []
        pattern = r"compute buffer size =\s*([\d.]+) MiB"
        with door.listening(lambda line: seen.extend(float(m) for m in re.findall(pattern, line))):
            runtime = load_runtime(facts, RuntimeOptions(ctx=n_ctx, threads=2, flash_attn=flash))
        runtime.decoder.close()
        return sum(seen) * 2**20

    grown = reported(16384) - reported(4096)
    planned = compute_bytes(facts.hparams, 16384, 512, flash) - compute_bytes(facts.hparams, 4096, 512, flash)
    assert abs(grown - planned) <= 0.02 * planned


def test_auto_takes_the_largest_context_that_fits() -> None:
    memory = Memory(12 * GiB)
    plan = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto"), memory)
    assert plan.auto and plan.options.flash_attention and plan.options.ctx == plan.n_ctx
    assert 65536 < plan.n_ctx < 131072 and plan.n_ctx % 1024 == 0
    assert plan.needed <= memory.free * context_plan.MARGIN
    with pytest.raises(ContextTooLarge):  # 1,024 more tokens would not fit
        plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx=plan.n_ctx + 1024, flash_attn=True),
                     memory)
    q8 = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("q8_0", ctx="auto"), memory)
    assert q8.n_ctx == 131072  # a smaller KV type fits the whole trained context


def test_a_context_that_does_not_fit_is_refused_with_the_numbers() -> None:
    with pytest.raises(ContextTooLarge) as refused:
        plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="max"), Memory(8 * GiB))
    message = str(refused.value)
    assert "131,072 tokens needs" in message and "5.0 GiB f16 KV cache" in message and "8.0 GiB of RAM" in message
    assert "--ctx auto gives" in message
    with pytest.raises(ContextTooLarge, match="leave no room"):
        plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto"), Memory(4 * GiB))


def test_without_flash_attention_long_prompts_need_the_scores_buffer() -> None:
    """GLM-4-9B's attention scores and mask for a 512-token batch at 128K context: 8.25 GiB; with flash
    attention only the f16 mask, 128 MiB."""
    assert compute_bytes(FLAGSHIP, 131072, 512, flash_attn=False) == 8.25 * GiB
    assert compute_bytes(FLAGSHIP, 131072, 512, flash_attn=True) == 128 * 2**20
    plan = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("q8_0", ctx=8192), Memory(None))
    assert plan.options.flash_attention  # a quantized V cache needs it: turned on


def test_unknown_memory_refuses_nothing() -> None:
    plan = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="max"), Memory(None))
    assert plan.n_ctx == 131072 and plan.free_after is None
    auto = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto"), Memory(None))
    assert auto.n_ctx == 32768


def test_the_cli_prints_the_plan_and_refuses_what_does_not_fit(scripted_gguf: Callable[[str], Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(scripted_gguf("answer"))
    result = invoke(["chat", model, "-p", "hi", "--ctx", "auto", "-v"])
    assert result.exit_code == 0 and "(auto: the most that fits, trained 4,096)" in result.stderr
    assert "of RAM left" in result.stderr
    assert ", flash attention" in result.stderr  # on unless asked otherwise: no slower here, and less memory
    off = invoke(["chat", model, "-p", "hi", "--ctx", "auto", "-v", "--no-flash-attn"])
    assert off.exit_code == 0 and "flash attention" not in off.stderr
    monkeypatch.setattr(device, "ram", lambda: (64 * 2**20, 64 * 2**20))  # a 64 MiB machine
    one_line_error(invoke(["chat", model, "-p", "hi", "--ctx", "max"]), "4,096 tokens needs", "of RAM is free")


def test_doctor_says_what_the_million_token_variant_needs() -> None:
    shown = invoke(["doctor"]).stdout
    assert "1,048,576-token variant (-1m): its KV cache takes 80.0 GiB f16 / 42.5 GiB q8_0 / 22.5 GiB q4_0" in shown
    assert "here, with Q4_K_M weights: up to" in shown


def test_the_device_says_whether_flash_attention_is_worth_it_where_both_fit() -> None:
    plenty = 1024 * GiB
    slower = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto"),
                          Memory(plenty, flash_attention_slower=True))
    faster = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto"), Memory(plenty))
    assert slower.n_ctx == faster.n_ctx == FLAGSHIP.context_length
    assert (slower.options.flash_attention, faster.options.flash_attention) == (False, True)


def test_flash_attention_follows_the_device_unless_asked() -> None:
    """Not asked: as the device says (on, where it is no slower); asked off: off, even where on would buy
    context; asked on, or a quantized V cache: on."""
    tight = Memory(int((Q4_K_M_WEIGHTS + 5 * GiB) / context_plan.MARGIN))
    for memory, asked, expected in ((Memory(None), None, True), (Memory(None, flash_attention_slower=True), None,
                                                                  False), (Memory(None), False, False),
                                    (Memory(None, flash_attention_slower=True), True, True)):
        plan = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx=8192, flash_attn=asked), memory)
        assert plan.options.flash_attention is expected
    off = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto", flash_attn=False), tight)
    on = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("f16", ctx="auto"), tight)
    assert not off.options.flash_attention and on.options.flash_attention and off.n_ctx < on.n_ctx
    quantized = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, kv_options("q8_0", ctx=8192, flash_attn=False),
                             Memory(None))
    assert quantized.options.flash_attention



def test_the_default_context_is_the_most_that_fits_up_to_32k() -> None:
    """Apps send prompts of 8K tokens and more (Open WebUI's first message with its tools: 8,259), so the default
    is 32K; where that does not fit it is the most that does, never a refusal. A context asked for is refused."""
    default = kv_options("f16", ctx=32768, ctx_given=False)
    roomy = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, default, Memory(64 * GiB))
    assert (roomy.n_ctx, roomy.auto) == (32768, False)
    tight = plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, default, Memory(8 * GiB))
    assert 8259 < tight.n_ctx < 32768 and tight.auto and tight.needed <= 8 * GiB * context_plan.MARGIN
    with pytest.raises(ContextTooLarge):
        plan_context(GLM4_9B, FLAGSHIP, Q4_K_M_WEIGHTS, replace(default, ctx_given=True), Memory(8 * GiB))


def test_serve_takes_as_many_slots_as_memory_holds_each_at_the_full_context(scripted_gguf: Callable[[str], Path],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """By default up to three slots (a watched reply never waits behind an app's background requests), but
    never at the cost of any request's context: where memory holds fewer, fewer; where one, one."""
    path, options = scripted_gguf("answer"), RuntimeOptions(threads=2, ctx_given=False)  # as serve starts
    needed = {n: plan_model(path, options, print, slots=n).context.needed for n in (1, 2, 3)}
    full = plan_model(path, options, print, slots=1).n_ctx
    for available, slots in ((needed[3], 3), (needed[2], 2), (needed[1], 1)):
        room = int(available / context_plan.MARGIN) + 1
        monkeypatch.setattr(device, "ram", lambda room=room: (room, room))
        plan = plan_serving(path, options, print, 0, 3)
        assert (plan.context.slots, plan.n_ctx) == (slots, full)
    assert plan_serving(path, options, print, 5, 3).context.slots == 5  # asked for: as asked

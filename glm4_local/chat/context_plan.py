"""How much context this machine can give a model: weights + KV cache + compute buffers against the
free memory (core/llama/device.py says which: RAM, or a discrete GPU's when the layers go there).
One function for chat, serve and doctor. `--ctx auto` takes the largest context up to the trained one
that fits; any context that does not fit is refused with the numbers, never left to swap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import gguf

from glm4_local.chat.options import DEFAULT_CTX, MIN_CTX, RuntimeOptions
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.family import Hyperparams, ModelFamily
from glm4_local.core.llama.device import Memory

OVERHEAD_BYTES = 600 * 2**20  # the runtime, output buffers and what llama.cpp allocates besides
MARGIN = 0.9  # of the free memory: room for everything else the machine does
STEP = 1024  # auto contexts are whole multiples of this


class ContextTooLarge(Glm4LocalError):
    """The context asked for does not fit this machine's memory."""


@dataclass(frozen=True)
class ContextPlan:
    n_ctx: int
    slots: int
    kv_bytes: int  # all slots
    compute_bytes: int
    weights_bytes: int
    memory: Memory
    options: RuntimeOptions  # with the context decided (a number) and flash attention as needed
    auto: bool = False

    @property
    def needed(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + OVERHEAD_BYTES

    @property
    def free_after(self) -> int | None:
        return None if self.memory.free is None else self.memory.free - self.needed


def kv_type_name(qtype: gguf.GGMLQuantizationType) -> str:
    return qtype.name.lower()


def compute_bytes(h: Hyperparams, n_ctx: int, batch: int, flash_attn: bool) -> int:
    """What llama.cpp's compute buffer grows by with the context: without flash attention a prompt batch's
    attention scores (a float per head) and its mask (a float), n_ctx × batch × 4 × (heads + 1), GiBs at
    long contexts; with it only the mask, in f16. (Its part that does not grow with the context is in
    OVERHEAD_BYTES.) Checked against the buffer llama.cpp reports creating (tests/test_context_plan.py)."""
    per_position = 2 if flash_attn else 4 * (max(h.n_head, 1) + 1)
    return n_ctx * batch * per_position


def plan_context(family: ModelFamily, h: Hyperparams, weights_bytes: int, options: RuntimeOptions,
                 memory: Memory, slots: int = 1) -> ContextPlan:
    """The context the options ask for (or, for "auto", the most that fits), checked against `memory`. The
    default context (not asked for) is a ceiling: where it does not fit, the most that does is taken."""
    auto = options.ctx == "auto"

    def plan(n_ctx: int, flash: bool, fitted: bool = auto) -> ContextPlan:
        kv = slots * family.kv_cache_bytes(h, n_ctx, options.cache_type_k, options.cache_type_v)
        compute = compute_bytes(h, n_ctx * slots, options.batch, flash)
        chosen = replace(options, ctx=n_ctx, flash_attn=flash)
        return ContextPlan(n_ctx, slots, kv, compute, weights_bytes, memory, chosen, fitted)

    flash = options.flash_attention if options.flash_attn is not None else not memory.flash_attention_slower
    if not auto:
        chosen = plan(options.context_size(h.context_length), flash or options.flash_needed)
        if memory.free is None or chosen.needed <= memory.free * MARGIN:
            return chosen
        if options.ctx_given:
            raise ContextTooLarge(_too_large(chosen, family, h, weights_bytes, options, memory, slots))
        return _most_that_fits(plan, options, memory, weights_bytes, ceiling=chosen.n_ctx)
    if memory.free is None:  # nothing to size by: the default
        return plan(min(h.context_length, DEFAULT_CTX), flash or options.flash_needed)
    return _most_that_fits(plan, options, memory, weights_bytes, ceiling=h.context_length)


def _most_that_fits(plan: Callable[..., ContextPlan], options: RuntimeOptions, memory: Memory, weights_bytes: int,
                    ceiling: int) -> ContextPlan:
    assert memory.free is not None
    room = memory.free * MARGIN
    # where flash attention costs speed (the device says), it is taken only where it buys context: without
    # it the scores buffer, not the KV cache, is what runs out first
    choices = [True] if options.flash_attention else [False] if options.flash_attn is False else [False, True]
    found = [(best, flash) for flash in choices
             if (best := _largest(lambda n, f=flash: plan(n, f).needed <= room, ceiling)) is not None]
    if not found:
        raise ContextTooLarge(f"the model's weights ({_gib(weights_bytes)}) leave no room for a context in "
                              f"the {_gib(memory.free)} of {memory.kind} free")
    n_ctx, flash = max(found, key=lambda c: (c[0], c[1] != memory.flash_attention_slower))
    return plan(n_ctx, flash, True)


def _largest(fits: Callable[[int], bool], ceiling: int) -> int | None:
    """The largest context (a multiple of STEP, or the ceiling) for which `fits` holds."""
    if fits(ceiling):
        return ceiling
    low, high = 0, ceiling // STEP  # fits(low * STEP) holds (or low is 0), fits(high * STEP) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle * STEP) else (low, middle)
    if low:
        return low * STEP
    return MIN_CTX * 8 if fits(MIN_CTX * 8) else None


def _too_large(chosen: ContextPlan, family: ModelFamily, h: Hyperparams, weights_bytes: int,
               options: RuntimeOptions, memory: Memory, slots: int) -> str:
    kv = kv_type_name(options.cache_type_v)
    line = (f"a context of {chosen.n_ctx:,} tokens needs {_gib(chosen.needed)} ({_gib(weights_bytes)} weights, "
            f"{_gib(chosen.kv_bytes)} {kv} KV cache, {_gib(chosen.compute_bytes + OVERHEAD_BYTES)} buffers) "
            f"and {_gib(memory.free or 0)} of {memory.kind} is free")
    try:
        fitting = plan_context(family, h, weights_bytes, replace(options, ctx="auto"), memory, slots)
        return line + f"; --ctx auto gives {fitting.n_ctx:,} tokens (or a smaller KV type, --cache-type-k/-v q8_0)"
    except ContextTooLarge:
        return line


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def largest_contexts(family: ModelFamily, h: Hyperparams, weights_bytes: int, free: int) -> dict[str, int]:
    """For doctor: the largest context that fits `free` bytes with each KV type (flash attention on)."""
    found = {}
    for name in ("f16", "q8_0", "q4_0"):
        qtype = gguf.GGMLQuantizationType[name.upper()]
        options = RuntimeOptions(ctx="auto", cache_type_k=qtype, cache_type_v=qtype)
        try:
            found[name] = plan_context(family, h, weights_bytes, options, Memory(free)).n_ctx
        except ContextTooLarge:
            found[name] = 0
    return found

"""What chat and serve say before loading a model: its problems, the context it gets, the memory it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glm4_local.chat.context_plan import ContextPlan, ContextTooLarge, kv_type_name, plan_context
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts
from glm4_local.core.gguf.problems import REPAIR, quick_problems
from glm4_local.core.llama.device import this_machine


def size_text(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ModelPlan:
    """A checked model and what running it with these options takes."""

    facts: ModelFacts
    context: ContextPlan

    @property
    def n_ctx(self) -> int:
        """Tokens of context per slot."""
        return self.context.n_ctx

    @property
    def kv_cache_bytes(self) -> int:
        """All slots."""
        return self.context.kv_bytes

    @property
    def options(self) -> RuntimeOptions:
        """The options to load with: the context decided, flash attention on where it must be."""
        return self.context.options

    def describe(self) -> str:
        plan, trained = self.context, self.facts.hparams.context_length
        how = "auto: the most that fits, " if plan.auto else ""
        kv = kv_type_name(plan.options.cache_type_v)
        flash = ", flash attention" if plan.options.flash_attention else ""
        free = "" if plan.free_after is None else f"; {size_text(plan.free_after)} of {plan.memory.kind} left"
        return f"context {self.n_ctx:,} tokens ({how}trained {trained:,}), KV cache {size_text(self.kv_cache_bytes)} " \
               f"{kv}{flash}{free}"


def plan_serving(path: Path, runtime: RuntimeOptions, warn: Callable[[str], None], slots: int,
                 most: int) -> ModelPlan:
    """plan_model for `slots` slots; 0: the most, up to `most`, that each get the context one slot alone
    would, with the same attention (more slots never cost a request its context or its speed), else one."""
    alone = plan_model(path, runtime, warn, slots=slots or 1)
    if slots:
        return alone
    for count in range(most, 1, -1):
        try:
            shared = plan_context(alone.facts.family, alone.facts.hparams, alone.context.weights_bytes, runtime,
                                  alone.context.memory, count)
        except ContextTooLarge:
            continue
        if shared.n_ctx >= alone.n_ctx and shared.options.flash_attention == alone.options.flash_attention:
            return ModelPlan(alone.facts, shared)
    return alone


def plan_model(path: Path, runtime: RuntimeOptions, warn: Callable[[str], None], slots: int = 1) -> ModelPlan:
    """Read and check the GGUF, warn about what `repair` fixes, and size its context against the memory
    free (ContextTooLarge, with the numbers, when it does not fit)."""
    facts = ModelFacts.read(path)
    for problem in quick_problems(facts.header, facts.family):
        warn(f"{facts.path.name}: {problem}; {REPAIR}")
    trained = facts.hparams.context_length
    if runtime.ctx_given and isinstance(runtime.ctx, int) and runtime.ctx > trained:
        warn(f"--ctx {runtime.ctx:,} is more than the {trained:,} tokens {facts.path.name} was trained for; it gets "
             f"{trained:,}")
    device = this_machine()
    memory = device.memory(offloaded=device.gpu_layers(runtime.gpu_layers) != 0)
    weights = path.stat().st_size  # the tensors, near enough (the header is a few MiB at most)
    return ModelPlan(facts, plan_context(facts.family, facts.hparams, weights, runtime, memory, slots))

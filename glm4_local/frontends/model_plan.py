"""What chat and serve say before loading a model: its problems, the context it gets, the KV cache size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts
from glm4_local.core.gguf.problems import REPAIR, quick_problems


def size_text(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ModelPlan:
    """A checked model and what running it with these options takes."""

    facts: ModelFacts
    slots: int
    n_ctx: int  # tokens of context per slot
    kv_cache_bytes: int  # all slots

    def describe(self) -> str:
        trained = self.facts.hparams.context_length
        return (f"context {self.n_ctx:,} tokens (trained {trained:,}), KV cache {size_text(self.kv_cache_bytes)}")


def plan_model(path: Path, runtime: RuntimeOptions, warn: Callable[[str], None], slots: int = 1) -> ModelPlan:
    """Read and check the GGUF, warn about what `repair` fixes, and size its context and KV cache."""
    facts = ModelFacts.read(path)
    for problem in quick_problems(facts.header, facts.family):
        warn(f"{facts.path.name}: {problem}; {REPAIR}")
    n_ctx = runtime.context_size(facts.hparams.context_length)
    return ModelPlan(facts, slots, n_ctx, slots * facts.kv_cache_bytes(n_ctx, runtime))

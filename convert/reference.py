"""The family's numpy forward pass over a checkpoint's own weights: the yardstick for `verify`.

The forward pass itself is the family's (written from the architecture, not from llama.cpp); this
serves it float32 weights by GGUF tensor name straight from the safetensors files, one tensor at a
time, so a 9B checkpoint needs about one layer of float32 weights in memory, not the whole model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from glm4_local.convert.safetensors import SafetensorsCheckpoint
from glm4_local.convert.tensors import PlannedTensor
from glm4_local.core.families.family import ModelFamily, ModelSpec

_OUTPUT_BLOCK_ROWS = 16384


class ReferenceModel:
    """Logits for a token sequence, computed in float32 from the safetensors checkpoint."""

    def __init__(self, family: ModelFamily, spec: ModelSpec, checkpoint: SafetensorsCheckpoint,
                 plan: Sequence[PlannedTensor]) -> None:
        self.family = family
        self.spec = spec
        self.checkpoint = checkpoint
        self.by_name = {p.name: p for p in plan}

    def has(self, name: str) -> bool:
        return name in self.by_name

    def tensor(self, name: str) -> np.ndarray:
        parts = [self.checkpoint.f32(source) for source in self.by_name[name].sources]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        source = self.by_name[name].sources[0]
        return self.checkpoint.to_f32(source, self.checkpoint.raw(source)[ids])

    def row_blocks(self, name: str) -> Iterator[np.ndarray]:
        source = self.by_name[name].sources[0]
        raw = self.checkpoint.raw(source)
        for start in range(0, raw.shape[0], _OUTPUT_BLOCK_ROWS):
            yield self.checkpoint.to_f32(source, raw[start : start + _OUTPUT_BLOCK_ROWS])

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """(len(tokens), vocab) float32 logits, position i predicting token i+1."""
        return self.family.forward(self.spec, self, tokens)

"""Which checkpoint tensors become which GGUF tensors, checked against the family's table.

The table itself (names per layout, expected shapes) is the model family's; this plans a
conversion from it. Every missing, misshapen or unexpected tensor is a CheckpointError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from glm4_local.core.errors import CheckpointError
from glm4_local.core.families.family import ModelFamily, ModelSpec, Shape


@dataclass(frozen=True)
class PlannedTensor:
    """A GGUF tensor to write: name, numpy shape, and the checkpoint tensors stacked to make it."""

    name: str
    shape: Shape
    sources: tuple[str, ...]

    @property
    def is_vector(self) -> bool:
        return len(self.shape) == 1


def plan_tensors(family: ModelFamily, spec: ModelSpec, shapes: Mapping[str, Shape], where: str
                 ) -> list[PlannedTensor]:
    """Map checkpoint tensors (name -> shape) to GGUF tensors, in file order."""
    plan: list[PlannedTensor] = []
    used: set[str] = set()
    for target, bid in family.tensors.targets(spec):
        sources = []
        for part in target.parts[spec.layout]:
            name = part.pattern.format(bid=bid)
            expected = part.shape(spec)
            if name not in shapes:
                raise CheckpointError(f"{where}: tensor {name!r} is missing")
            if tuple(shapes[name]) != expected:
                raise CheckpointError(
                    f"{where}: tensor {name!r} has shape {list(shapes[name])}, expected {list(expected)}"
                )
            sources.append(name)
            used.add(name)
        rows = sum(shapes[s][0] for s in sources)
        plan.append(PlannedTensor(target.gguf_name(bid), (rows, *shapes[sources[0]][1:]), tuple(sources)))
    unexpected = sorted(set(shapes) - used - family.tensors.derived)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: unexpected tensor {unexpected[0]!r}{more} for this {family.name} config")
    return plan

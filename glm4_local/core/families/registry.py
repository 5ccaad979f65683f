"""The model families glm4-local knows, and which one a checkpoint or a GGUF belongs to.

Adding a family: write its module (see glm4.py) and list it in FAMILIES.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glm4_local.core.errors import CheckpointError, GGUFFileError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.families.glm4_0414 import GLM4_0414

FAMILIES: tuple[ModelFamily, ...] = (GLM4_9B, GLM4_0414)


def supported_checkpoints() -> str:
    return "; ".join(f.supported for f in FAMILIES)


def family_for_config(config: Mapping[str, Any], where: str) -> ModelFamily:
    """The family whose checkpoints use this config.json; CheckpointError naming what was found."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    for family in FAMILIES:
        if model_type in family.refused_model_types:
            reason = family.refused_model_types[model_type]
            raise CheckpointError(f"{where}: {reason}; supported: {supported_checkpoints()}")
    archs = config.get("architectures") or []
    found = f"model_type {model_type!r}" + (f", architectures {archs}" if archs else "")
    raise CheckpointError(f"{where}: unsupported architecture ({found}); supported: {supported_checkpoints()}")


def family_for_arch(arch: object) -> ModelFamily | None:
    """The family of a GGUF whose general.architecture is `arch`, if glm4-local knows it."""
    return next((f for f in FAMILIES if f.arch_name == arch), None)


def unknown_arch(arch: object) -> str:
    known = ", ".join(f"'{f.arch_name}' ({f.name})" for f in FAMILIES)
    return f"architecture {arch!r} is not GLM-4 (glm4-local runs {known})"


def require_family(arch: object, where: str) -> ModelFamily:
    family = family_for_arch(arch)
    if family is None:
        raise GGUFFileError(f"{where}: {unknown_arch(arch)}")
    return family

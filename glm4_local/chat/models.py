"""Find the GGUF a user means: a path, a name in the models folders, or the newest model there."""

from __future__ import annotations

import os
from pathlib import Path

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.paths import MODELS_DIR

HOW_TO_CONVERT = "convert one with: glm4-local convert THUDM/glm-4-9b-chat"


def model_dirs() -> list[Path]:
    """./models, then $GLM4_LOCAL_MODELS (os.pathsep-separated)."""
    dirs = [MODELS_DIR]
    extra = os.environ.get("GLM4_LOCAL_MODELS", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return dirs


def _ggufs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.gguf")) if folder.is_dir() else []


def resolve_model(name: str | None) -> Path:
    """The GGUF file for `name` (None: the only or newest model in the models folders)."""
    if name is not None:
        path = Path(name).expanduser()
        if path.is_file():
            return path
        for folder in model_dirs():
            matches = [p for p in _ggufs(folder) if name in (p.name, p.stem)]
            if not matches:
                matches = [p for p in _ggufs(folder) if name.lower() in p.name.lower()]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(p.name for p in matches)
                raise Glm4LocalError(f"{name}: matches several models in {folder} ({names}); be more specific")
        raise Glm4LocalError(f"{name}: no such model file, nor a model of that name in "
                             f"{', '.join(str(d) for d in model_dirs())}; {HOW_TO_CONVERT}")
    for folder in model_dirs():
        found = _ggufs(folder)
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    raise Glm4LocalError(f"no model found (looked in {searched()}); {HOW_TO_CONVERT}")


def searched() -> str:
    """The models folders, each with why it held nothing, for messages."""
    parts = []
    for folder in model_dirs():
        shown = f"./{folder}" if not folder.is_absolute() else str(folder)
        if not folder.is_dir():
            parts.append(f"{shown}, which does not exist")
        else:
            parts.append(f"{shown}, which has no .gguf file")
    if not os.environ.get("GLM4_LOCAL_MODELS"):
        parts.append("and $GLM4_LOCAL_MODELS is not set")
    return "; ".join(parts)

"""Find the GGUF a user means: a path, a name in the models folders, or the newest model there."""

from __future__ import annotations

import os
from pathlib import Path

from glm4_local.core.errors import Glm4LocalError, NoModelError
from glm4_local.core.paths import MODELS_DIR, store_dir

HOW_TO_PULL = "get one with: glm4-local pull"


def model_dirs() -> list[Path]:
    """./models, then $GLM4_LOCAL_MODELS (os.pathsep-separated), then the store ($GLM4_LOCAL_HOME/models)."""
    dirs = [MODELS_DIR]
    extra = os.environ.get("GLM4_LOCAL_MODELS", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    dirs.append(store_dir())
    return list(dict.fromkeys(dirs))


def models_in(folder: Path) -> list[Path]:
    """The GGUF files in `folder`, by name (not its hidden temporary and partial files)."""
    try:
        return sorted(p for p in folder.glob("*.gguf") if not p.name.startswith(".") and p.is_file())
    except OSError:
        return []


def resolve_model(name: str | None) -> Path:
    """The GGUF file for `name` (None: the newest model in the first models folder that has one)."""
    if name is not None:
        path = Path(name).expanduser()
        if path.is_file():
            return path
        for folder in model_dirs():
            matches = [p for p in models_in(folder) if name in (p.name, p.stem)]
            if not matches:
                matches = [p for p in models_in(folder) if name.lower() in p.name.lower()]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(p.name for p in matches)
                raise Glm4LocalError(f"{name}: matches several models in {folder} ({names}); be more specific")
        raise Glm4LocalError(f"{name}: no such model file, nor a model of that name in "
                             f"{', '.join(shown(d) for d in model_dirs())}; `glm4-local list` shows the models "
                             "there, `glm4-local pull NAME` gets one")
    for folder in model_dirs():
        found = models_in(folder)
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    raise NoModelError(f"no model found (looked in {searched()}); {HOW_TO_PULL}")


def shown(folder: Path) -> str:
    return f"./{folder}" if not folder.is_absolute() else str(folder)


def searched() -> str:
    """The models folders, each with what it holds, for messages."""
    parts = []
    for folder in model_dirs():
        if not folder.is_dir():
            parts.append(f"{shown(folder)}, which does not exist")
        else:
            count = len(models_in(folder))
            parts.append(f"{shown(folder)}, with {count} model{'' if count == 1 else 's'}" if count
                         else f"{shown(folder)}, which has no .gguf file")
    if not os.environ.get("GLM4_LOCAL_MODELS"):
        parts.append("and $GLM4_LOCAL_MODELS is not set")
    return "; ".join(parts)

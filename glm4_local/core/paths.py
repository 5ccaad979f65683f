"""Where glm4-local keeps its files: the one definition of each folder."""

from __future__ import annotations

import os
from pathlib import Path

# relative: the folder a user runs glm4-local in (the project's layout keeps GGUFs in ./models)
MODELS_DIR = Path("models")


def data_home() -> Path:
    """$GLM4_LOCAL_HOME, else $XDG_DATA_HOME/glm4-local (~/.local/share/glm4-local): conversations, caches,
    the model store."""
    if os.environ.get("GLM4_LOCAL_HOME"):
        return Path(os.environ["GLM4_LOCAL_HOME"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "glm4-local"


def store_dir() -> Path:
    """The model store: what `pull` publishes, found from any folder."""
    return data_home() / "models"

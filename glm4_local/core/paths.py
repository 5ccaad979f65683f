"""Where glm4-local keeps models by default: the one definition of the `models/` folder."""

from __future__ import annotations

from pathlib import Path

# relative: the folder a user runs glm4-local in (the project's layout keeps GGUFs in ./models)
MODELS_DIR = Path("models")

"""Text shipped with the package: written for glm4-local, mixing Chinese, English and code."""

from __future__ import annotations

from importlib import resources


def builtin_text() -> str:
    """The text `eval`, `--imatrix auto` and `repair`'s tokenizer check read by default."""
    return resources.files("glm4_local.convert").joinpath("data/calibration.txt").read_text(encoding="utf-8")

"""Text shipped with the package: written for glm4-local, mixing Chinese, English and code."""

from __future__ import annotations

from importlib import resources


def _read(name: str) -> str:
    return resources.files("glm4_local.convert").joinpath(f"data/{name}").read_text(encoding="utf-8")


def calibration_text() -> str:
    """What `--imatrix auto` runs the 16-bit model over."""
    return _read("calibration.txt")


def eval_text() -> str:
    """What `eval` scores by default: other text than the calibration, so imatrix types are not flattered."""
    return _read("eval.txt")

"""tiktoken's rank file (GLM-4-9B's tokenizer.model): one `base64-token rank` per line."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from glm4_local.core.errors import CheckpointError
from glm4_local.core.gguf.bpe import missing_single_bytes


def load_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken rank file (`base64 rank` per line); ranks must be 0..n-1."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    ranks: dict[bytes, int] = {}
    try:
        for line in text.decode("ascii").splitlines():
            if line:
                token, rank = line.split(" ")
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (UnicodeDecodeError, ValueError, binascii.Error) as e:
        raise CheckpointError(
            f"{path}: not a GLM-4 tiktoken vocabulary (a sentencepiece model means ChatGLM2/3, not supported)"
        ) from e
    if not ranks:
        raise CheckpointError(f"{path}: the vocabulary is empty")
    missing = missing_single_bytes(ranks)
    if missing:
        raise CheckpointError(f"{path}: the vocabulary lacks {len(missing)} of the 256 single-byte tokens "
                              "byte-level BPE needs (a damaged file?)")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: vocabulary ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks

"""A Hugging Face `tokenizer.json` (GLM-4-0414's): a byte-level BPE whose ranks are its token ids.

It is read as tiktoken's ranks are (convert/vocab.py then writes every split of every token as the
merges, and llama.cpp's `glm4` pre-tokenizer looks a whole piece up first), which is exact only for a
BPE that works as tiktoken does: the family's split regex, byte-level pieces, whole pieces looked up
first (`ignore_merges`) and merges in the order of the ranks they make, as transformers' conversion of
tiktoken ranks writes them. Anything else is refused, naming what differs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from glm4_local.core.errors import CheckpointError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.gguf.bpe import byte_to_unicode, missing_single_bytes
from glm4_local.core.jsonfile import read_json

MAX_TOKENIZER_BYTES = 256 * 2**20  # GLM-4-0414's is ~20 MB


def load_hf_ranks(path: Path, family: ModelFamily) -> dict[bytes, int]:
    """Byte token -> rank of a tokenizer.json's BPE (its special tokens left to tokenizer_config.json)."""
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_TOKENIZER_BYTES // 2**20} MiB; not a tokenizer")
    data = read_json(path, CheckpointError)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"{path}: not a BPE tokenizer.json")
    _check_pre_tokenizer(path, data.get("pre_tokenizer"), family)
    if model.get("ignore_merges") is not True:
        raise CheckpointError(f"{path}: ignore_merges is not set, and {family.name}'s tokenizer looks whole pieces "
                              "up first")
    special = {t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")}
    ranks: dict[bytes, int] = {}
    for text, token_id in model["vocab"].items():
        raw = _bytes(text)
        if raw is None or isinstance(token_id, bool) or not isinstance(token_id, int):
            raise CheckpointError(f"{path}: vocabulary entry {str(text)[:40]!r} is not a byte-level token")
        if token_id not in special:
            ranks[raw] = token_id
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: token ids are not 0..{len(ranks) - 1} without gaps")
    if missing := missing_single_bytes(ranks):
        raise CheckpointError(f"{path}: the vocabulary lacks {len(missing)} of the 256 single-byte tokens")
    _check_merges(path, model.get("merges"), ranks)
    return ranks


def _check_pre_tokenizer(path: Path, pre: Any, family: ModelFamily) -> None:
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    split = steps[0] if isinstance(steps, list) and len(steps) == 2 and isinstance(steps[0], dict) else {}
    pattern = (split.get("pattern") or {}).get("Regex") if isinstance(split.get("pattern"), dict) else None
    byte_level = steps[1] if isinstance(steps, list) and len(steps) == 2 and isinstance(steps[1], dict) else {}
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or byte_level.get("type") != "ByteLevel":
        raise CheckpointError(f"{path}: the pre-tokenizer is not a regex split then byte-level, as {family.name}'s is")
    if pattern != family.pre_tokenizer_pattern:
        raise CheckpointError(f"{path}: the pre-tokenizer's regex is not {family.name}'s")


def _check_merges(path: Path, merges: Any, ranks: dict[bytes, int]) -> None:
    """Each merge makes a token, and in the order of their ranks: then BPE here is tiktoken's."""
    if not isinstance(merges, list):
        raise CheckpointError(f"{path}: the BPE has no merges list")
    last = -1
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else merge
        parts = [_bytes(p) for p in pair] if isinstance(pair, list) and len(pair) == 2 else []
        made = ranks.get(parts[0] + parts[1]) if len(parts) == 2 and parts[0] and parts[1] else None
        if made is None or made < last:
            problem = "makes no token" if made is None else "is out of rank order"
            raise CheckpointError(f"{path}: merge {merge!r} {problem}; glm4-local reproduces only BPE whose "
                                  "merges follow the ranks (tiktoken's) exactly")
        last = made


@cache
def _byte_of() -> dict[str, int]:
    return {char: byte for byte, char in byte_to_unicode().items()}


def _bytes(text: object) -> bytes | None:
    """A byte-level token's bytes; None for anything else."""
    table = _byte_of()
    if not isinstance(text, str) or any(c not in table for c in text):
        return None
    return bytes(table[c] for c in text)

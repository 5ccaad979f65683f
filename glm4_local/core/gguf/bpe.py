"""Byte-level BPE vocabularies in GGUF's form, and merges that make llama.cpp tokenize like tiktoken.

tiktoken merges the adjacent pair whose concatenation has the lowest rank. llama.cpp merges the
pair listed earliest in `tokenizer.ggml.merges`. Listing *every* split of every token into two
tokens, ordered by the rank of the token they make, gives llama.cpp the same choices. Used to
write a vocabulary (convert) and to check one (info).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import gguf


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which GGUF BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def token_text(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


@cache
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def token_bytes(text: str) -> bytes | None:
    """Inverse of token_text; None for text that is not a byte-mapped token (e.g. a special token)."""
    inverse = _unicode_to_byte()
    try:
        return bytes(inverse[c] for c in text)
    except KeyError:
        return None


def bpe_merges(ranks: Mapping[bytes, int]) -> list[str]:
    """Every split of every token into two tokens, ordered by the made token's rank."""
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    merges: list[str] = []
    for token, _ in by_rank:
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append(f"{token_text(left)} {token_text(right)}")
    return merges


def vocabulary_ranks(tokens: list[str], types: list[int]) -> dict[bytes, int]:
    """The byte-level tokens of a GGUF vocabulary and their ids (tiktoken's ranks for GLM-4)."""
    ranks = {}
    for rank, (text, kind) in enumerate(zip(tokens, types, strict=False)):
        raw = token_bytes(text) if kind == gguf.TokenType.NORMAL else None
        if raw is not None:
            ranks[raw] = rank
    return ranks


def missing_splits(tokens: list[str], types: list[int], merges: list[str]) -> int:
    """How many two-token splits of vocabulary tokens the merges leave out (0 for an exact vocab)."""
    return len(set(bpe_merges(vocabulary_ranks(tokens, types))) - set(merges))


def missing_single_bytes(ranks: dict[bytes, int]) -> list[int]:
    """The bytes that are not tokens of their own: byte-level BPE needs all 256 (tiktoken panics on text
    with a byte it lacks), so any missing means a damaged vocabulary."""
    return [b for b in range(256) if bytes([b]) not in ranks]

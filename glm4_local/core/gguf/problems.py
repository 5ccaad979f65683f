"""What a glance at a GLM-4 GGUF's header shows wrong, and what to do about it (no llama.cpp needed)."""

from __future__ import annotations

import gguf

from glm4_local.core.families.family import ModelFamily
from glm4_local.core.gguf.bpe import missing_splits
from glm4_local.core.gguf.header import GGUFHeader

K = gguf.Keys

REPAIR = "run glm4-local repair on it"


def pre_tokenizer_problem(reader: GGUFHeader, family: ModelFamily) -> str | None:
    pre = reader.get(K.Tokenizer.PRE)
    if pre == family.pre_tokenizer:
        return None
    return (f"pre-tokenizer {pre!r} mis-tokenizes {family.name} (llama.cpp splits many vocabulary words that "
            "its tokenizer keeps whole)")


def quick_problems(reader: GGUFHeader, family: ModelFamily) -> list[str]:
    """What a glance at the header shows wrong (cheap enough to run before every chat)."""
    problems = [p for p in [pre_tokenizer_problem(reader, family)] if p]
    if reader.get(K.Tokenizer.EOM_ID) is None:
        problems.append(f"no end-of-message token, so other llama.cpp runtimes do not stop on {family.eom_token}")
    return problems


def tokenizer_warnings(reader: GGUFHeader, family: ModelFamily, specials: dict[str, int]) -> list[str]:
    """Settings known to make llama.cpp tokenize differently from the family's own tokenizer."""
    warnings = [p for p in [pre_tokenizer_problem(reader, family)] if p]
    if reader.get(K.Tokenizer.ADD_BOS):
        warnings.append(f"adds a BOS token, which {family.name} never saw in training")
    tokens = reader.get(K.Tokenizer.LIST) or []
    types = reader.get(K.Tokenizer.TOKEN_TYPE) or []
    merges = reader.get(K.Tokenizer.MERGES) or []
    left_out = missing_splits(tokens, types, merges) if tokens and len(types) == len(tokens) else 0
    if left_out:
        warnings.append(
            f"merges leave out {left_out:,} ways to build vocabulary tokens, so llama.cpp splits some text "
            f"differently from {family.name}"
        )
    needed = dict.fromkeys((family.eos_token, *family.markup_tokens, *family.stop_tokens))
    missing = [t for t in needed if t not in specials]
    if missing:
        warnings.append(f"special tokens missing from the vocabulary: {', '.join(missing)}")
    return [f"{w}; {REPAIR}" for w in warnings]

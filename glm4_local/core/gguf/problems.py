"""What a glance at a GLM-4 GGUF's header shows wrong, and what to do about it (no llama.cpp needed)."""

from __future__ import annotations

import gguf

from glm4_local.core.families.family import ModelFamily
from glm4_local.core.families.registry import FAMILIES
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
    found = (pre_tokenizer_problem(reader, family), eos_problem(reader, family), template_problem(reader, family))
    problems = [p for p in found if p]
    if reader.get(K.Tokenizer.EOM_ID) is None:
        problems.append(f"no end-of-message token, so other llama.cpp runtimes do not stop on {family.eom_token}")
    return problems


def eos_problem(reader: GGUFHeader, family: ModelFamily) -> str | None:
    """An end-of-sequence id that is another token (community GGUFs of GLM-4-0414 disagree on it)."""
    tokens = reader.strings(K.Tokenizer.LIST) or []
    eos = reader.get(K.Tokenizer.EOS_ID)
    if not isinstance(eos, int) or not 0 <= eos < len(tokens) or tokens[eos] == family.eos_token:
        return None
    return f"the end-of-sequence id {eos} is {tokens[eos]}, not {family.eos_token}"


def template_problem(reader: GGUFHeader, family: ModelFamily) -> str | None:
    """A chat template published for another family (some GLM-4-0414 GGUFs carry GLM-4-9B-Chat's)."""
    template = reader.get(K.Tokenizer.CHAT_TEMPLATE)
    for other in FAMILIES:
        if other is not family and template in other.published_templates.values():
            return (f"its chat template is {other.name}'s, not this model's (the checkpoint's own goes in with "
                    "--template chat_template.jinja)")
    return None


def tokenizer_warnings(reader: GGUFHeader, family: ModelFamily, specials: dict[str, int]) -> list[str]:
    """Settings known to make llama.cpp tokenize (or prompt, or stop) differently from the family's own model."""
    found = (pre_tokenizer_problem(reader, family), eos_problem(reader, family), template_problem(reader, family))
    warnings = [p for p in found if p]
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

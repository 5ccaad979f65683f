"""GLM-4's own tokenizer (tiktoken over tokenizer.model) as the reference llama.cpp's tokenization is held
to, and the multilingual corpus it is held to on (tests/data/corpus.json)."""

from __future__ import annotations

import json
from pathlib import Path

import tiktoken

from glm4_local.convert.tiktoken_ranks import load_ranks
from glm4_local.core.families.glm4 import PATTERN
from glm4_local.core.llama import door as runtime

CORPUS: dict[str, str] = json.loads((Path(__file__).parents[1] / "data" / "corpus.json").read_text(encoding="utf-8"))


def reference_encoder(tokenizer_model: Path) -> tiktoken.Encoding:
    return tiktoken.Encoding("glm4", pat_str=PATTERN, mergeable_ranks=load_ranks(tokenizer_model),
                             special_tokens={})


def vocabulary_mismatches(llm, encoder: tiktoken.Encoding, ranks: dict[bytes, int]) -> list[tuple[int, str]]:
    bad = []
    for token, rank in ranks.items():
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a fragment of a character: no text can be just this token
        if runtime.tokenize(llm, text) != encoder.encode_ordinary(text):
            bad.append((rank, text))
    return bad


def corpus_mismatches(llm, encoder: tiktoken.Encoding, texts: list[str]) -> list[str]:
    return [t for t in texts if runtime.tokenize(llm, t) != encoder.encode_ordinary(t)]


def corpus_variants() -> list[str]:
    texts = list(CORPUS.values())
    return texts + [" " + t for t in texts] + ["\n".join(texts), "".join(texts)]

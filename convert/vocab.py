"""A checkpoint's byte-level BPE vocabulary as a GGUF vocabulary that llama.cpp tokenizes identically.

A reader per tokenizer file format (READERS; the family names its own) gives the ranked byte
tokens; the merges list every two-token split of every token in rank order (see core/gguf/bpe.py),
and the family's pre-tokenizer makes llama.cpp look a whole pre-tokenized piece up first, as
tiktoken does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from glm4_local.convert.hf_tokenizer import load_hf_ranks
from glm4_local.convert.tiktoken_ranks import load_ranks
from glm4_local.core.errors import CheckpointError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.gguf.bpe import bpe_merges, token_text
from glm4_local.core.jsonfile import read_json as read_json_file


@dataclass(frozen=True)
class TokenizerReader:
    """How one tokenizer file format reads: its file in the checkpoint, and byte token -> rank."""

    file_name: str
    read_ranks: Callable[[Path, ModelFamily], dict[bytes, int]]  # the file, and the family it must fit
    what: str  # for messages


# Adding a format: a module with its reader and one row here.
READERS: dict[str, TokenizerReader] = {
    "tiktoken": TokenizerReader("tokenizer.model", lambda path, _: load_ranks(path), "a tiktoken vocabulary"),
    "tokenizer.json": TokenizerReader("tokenizer.json", load_hf_ranks, "a Hugging Face tokenizer.json"),
}


def tokenizer_file(family: ModelFamily, folder: Path) -> Path:
    """The checkpoint's tokenizer file in the family's format; CheckpointError when it is missing."""
    reader = READERS[family.checkpoint_tokenizer]
    path = folder / reader.file_name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({family.name} needs {reader.what})")
    return path


def special_tokens(family: ModelFamily, tokenizer_config: Mapping[str, Any], first_id: int) -> dict[int, str]:
    """Special token ids -> text, from tokenizer_config.json when it lists them, else the family's."""
    decoder = tokenizer_config.get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        return {int(i): str(entry["content"]) for i, entry in decoder.items()}
    return {first_id + i: text for i, text in enumerate(family.special_tokens)}


@dataclass(frozen=True)
class GGUFVocabulary:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]

    def id_of(self, text: str) -> int:
        return self.special_ids[text]


def build_vocabulary(family: ModelFamily, tokenizer_path: Path, tokenizer_config: Mapping[str, Any],
                     vocab_size: int) -> GGUFVocabulary:
    """The GGUF vocabulary: ranked tokens, then special tokens, then padding up to vocab_size."""
    ranks = READERS[family.checkpoint_tokenizer].read_ranks(tokenizer_path, family)
    specials = special_tokens(family, tokenizer_config, len(ranks))
    size = max(vocab_size, len(ranks), max(specials, default=0) + 1)
    if size > vocab_size:
        raise CheckpointError(
            f"{tokenizer_path}: {size} tokens do not fit the model's vocabulary of {vocab_size}"
        )
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, rank in ranks.items():
        tokens[rank] = token_text(token)
        types[rank] = gguf.TokenType.NORMAL
    for token_id, text in specials.items():
        if token_id < len(ranks):
            raise CheckpointError(f"{tokenizer_path}: special token {text!r} id {token_id} collides with a rank")
        tokens[token_id] = text
        types[token_id] = gguf.TokenType.CONTROL
    for needed in (family.eos_token, family.eot_token, family.eom_token):
        if needed not in specials.values():
            raise CheckpointError(f"{tokenizer_path}: special token {needed} is not defined")
    special_ids = {text: token_id for token_id, text in specials.items()}
    return GGUFVocabulary(tokens, [int(t) for t in types], bpe_merges(ranks), special_ids)


def read_json(path: Path, required: bool = True) -> dict[str, Any]:
    """A JSON object file, or {} when optional and absent; errors name the file."""
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing")
        return {}
    data = read_json_file(path, CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data

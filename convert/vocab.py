"""GLM-4's tiktoken vocabulary as a GGUF BPE vocabulary that llama.cpp tokenizes identically.

tiktoken merges the adjacent pair whose concatenation has the lowest rank. llama.cpp merges the
pair listed earliest in `tokenizer.ggml.merges`. Listing *every* split of every token into two
tokens, ordered by the rank of the token they make, gives llama.cpp the same choices. The `glm4`
pre-tokenizer (same regex as GLM-4) also makes llama.cpp emit a whole pre-tokenized piece as one
token when it is in the vocabulary, exactly as tiktoken does; `chatglm-bpe` does not.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import gguf

from glm4_local.errors import CheckpointError
from glm4_local.jsonfile import read_json as read_json_file

PRE_TOKENIZER = "glm4"
# The regex GLM-4's own tokenizer (tiktoken) splits text with before BPE.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Fixed in GLM-4's tokenizer code; they follow the last rank in this order.
DEFAULT_SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|begin_of_video|>", "<|end_of_video|>",
)
EOS_TOKEN = "<|endoftext|>"
EOT_TOKEN = "<|user|>"


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


def missing_splits(tokens: list[str], types: list[int], merges: list[str]) -> int:
    """How many two-token splits of vocabulary tokens the merges leave out (0 for an exact vocab)."""
    ranks = {}
    for rank, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        raw = token_bytes(text) if kind == gguf.TokenType.NORMAL else None
        if raw is not None:
            ranks[raw] = rank
    return len(set(bpe_merges(ranks)) - set(merges))


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
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: vocabulary ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def special_tokens(tokenizer_config: Mapping[str, Any], first_id: int) -> dict[int, str]:
    """Special token ids -> text, from tokenizer_config.json when it lists them."""
    decoder = tokenizer_config.get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        return {int(i): str(entry["content"]) for i, entry in decoder.items()}
    return {first_id + i: text for i, text in enumerate(DEFAULT_SPECIAL_TOKENS)}


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


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]

    def id_of(self, text: str) -> int:
        return self.special_ids[text]


def build_vocabulary(tokenizer_path: Path, tokenizer_config: Mapping[str, Any], vocab_size: int) -> Vocabulary:
    """The GGUF vocabulary: ranked tokens, then special tokens, then padding up to vocab_size."""
    ranks = load_ranks(tokenizer_path)
    specials = special_tokens(tokenizer_config, len(ranks))
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
    for needed in (EOS_TOKEN, EOT_TOKEN):
        if needed not in specials.values():
            raise CheckpointError(f"{tokenizer_path}: special token {needed} is not defined")
    special_ids = {text: token_id for token_id, text in specials.items()}
    return Vocabulary(tokens, [int(t) for t in types], bpe_merges(ranks), special_ids)


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

"""Does llama.cpp tokenize a GGUF exactly as the family's own tokenizer (tiktoken) would?

The reference is rebuilt from the GGUF's own token list (GLM-4's ranks are its token ids), so no
tokenizer.model is needed. Checked: every vocabulary entry that is text, and the built-in text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from glm4_local.convert.texts import calibration_text, eval_text
from glm4_local.core.errors import GGUFFileError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.gguf.bpe import missing_single_bytes, vocabulary_ranks
from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.llama import door

K = gguf.Keys


def ranks_of(header: GGUFHeader) -> dict[bytes, int]:
    """The byte-level tokens of a GGUF's vocabulary and their ids (tiktoken's ranks for GLM-4)."""
    return vocabulary_ranks(header.get(K.Tokenizer.LIST) or [], header.get(K.Tokenizer.TOKEN_TYPE) or [])


@dataclass
class TokenizerCheck:
    checked: int = 0
    mismatched: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.mismatched

    def summary(self) -> str:
        if self.exact:
            return f"tokenizer check: all {self.checked:,} strings tokenize exactly as the model's own tokenizer"
        shown = ", ".join(repr(t) for t in self.mismatched[:5])
        return (f"tokenizer check: {len(self.mismatched):,} of {self.checked:,} strings tokenize differently "
                f"from the model's own tokenizer (e.g. {shown})")


def usable_ranks(header: GGUFHeader, where: str) -> dict[bytes, int]:
    """The vocabulary's ranks, if the family's tokenizer can use them: byte-level BPE needs every single
    byte as a token (tiktoken panics on text with a byte it lacks, as after a flipped byte in the file)."""
    ranks = ranks_of(header)
    missing = missing_single_bytes(ranks)
    if missing:
        raise GGUFFileError(f"{where}: the vocabulary lacks {len(missing)} of the 256 single-byte tokens "
                            f"(e.g. {bytes(missing[:3])!r}); it is corrupt or not byte-level BPE")
    return ranks


def check_texts(ranks: dict[bytes, int]) -> list[str]:
    """Every vocabulary entry that is valid UTF-8 text, then the lines of the built-in texts."""
    texts = []
    for raw in ranks:
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # a byte fragment: no text tokenizes to it alone
    lines = (calibration_text() + eval_text()).splitlines()
    return texts + [line for line in lines if line.strip()]


def check_tokenization(path: Path, header: GGUFHeader, family: ModelFamily,
                    on_progress: Callable[[int, int], None] | None = None) -> TokenizerCheck:
    """Tokenize every check text with llama.cpp (the file) and tiktoken (the reference)."""
    import tiktoken

    ranks = usable_ranks(header, str(path))
    llm = door.load(path, header=header, vocab_only=True)
    texts = check_texts(ranks)
    result = TokenizerCheck()
    try:
        reference = tiktoken.Encoding(f"{family.name}-check", pat_str=family.pre_tokenizer_pattern,
                                      mergeable_ranks=ranks, special_tokens={})
        for text in _progress(texts, on_progress):
            result.checked += 1
            if door.tokenize(llm, text) != reference.encode_ordinary(text):
                result.mismatched.append(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # tiktoken's Rust code panics (a BaseException) on ranks it cannot use
        raise GGUFFileError(f"{path}: the model's own tokenizer cannot read this vocabulary "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
    return result


def _progress(texts: list[str], on_progress: Callable[[int, int], None] | None) -> Iterable[str]:
    for i, text in enumerate(texts):
        if on_progress and i % 4096 == 0:
            on_progress(i, len(texts))
        yield text
    if on_progress:
        on_progress(len(texts), len(texts))

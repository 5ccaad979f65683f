"""llama.cpp must tokenize exactly like GLM-4's own tokenizer (tiktoken over tokenizer.model)."""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import factory
from helpers.tokenizers import CORPUS, corpus_mismatches, corpus_variants, reference_encoder, vocabulary_mismatches

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.convert.tiktoken_ranks import load_ranks
from glm4_local.core.llama import door as runtime


def test_corpus_covers_the_languages_it_claims() -> None:
    not_languages = ("code", "json", "emoji", "mixed", "math", "rare")
    languages = [k for k in CORPUS if len(k) <= 7 and not k.startswith(not_languages)]
    assert len(languages) >= 20
    assert {"zh", "ja", "ko", "ar", "ru", "vi", "hi"} <= set(CORPUS)


def test_synthetic_vocabulary_parity(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint()
    llm = runtime.load(make_gguf("f32"), vocab_only=True)
    ranks = load_ranks(folder / "tokenizer.model")
    encoder = reference_encoder(folder / "tokenizer.model")
    assert vocabulary_mismatches(llm, encoder, ranks) == []
    assert corpus_mismatches(llm, encoder, corpus_variants()) == []


def test_real_vocabulary_every_entry(real_vocab_gguf: Path) -> None:
    from helpers import factory

    ranks = load_ranks(factory.REAL_TOKENIZER)
    llm = runtime.load(real_vocab_gguf, vocab_only=True)
    assert len(ranks) == 151329
    assert vocabulary_mismatches(llm, reference_encoder(factory.REAL_TOKENIZER), ranks) == []


def test_real_vocabulary_multilingual_corpus(real_vocab_gguf: Path) -> None:
    from helpers import factory

    llm = runtime.load(real_vocab_gguf, vocab_only=True)
    assert corpus_mismatches(llm, reference_encoder(factory.REAL_TOKENIZER), corpus_variants()) == []


def assigned_characters(seed: int, count: int) -> list[str]:
    """Random strings from the corpus' characters and any code point assigned in Python's Unicode
    database (llama.cpp's tables predate Unicode 16, so later code points may split differently)."""
    rng = random.Random(seed)
    alphabet = sorted(set("".join(CORPUS.values())))
    out = []
    while len(out) < count:
        chars = []
        for _ in range(rng.randint(1, 40)):
            c = rng.choice(alphabet) if rng.random() < 0.8 else chr(rng.randint(0x20, 0x2FFFF))
            if unicodedata.category(c) not in ("Cn", "Cs"):
                chars.append(c)
        out.append("".join(chars))
    return out


def test_real_vocabulary_random_text(real_vocab_gguf: Path) -> None:
    from helpers import factory

    llm = runtime.load(real_vocab_gguf, vocab_only=True)
    encoder = reference_encoder(factory.REAL_TOKENIZER)
    assert corpus_mismatches(llm, encoder, assigned_characters(seed=0, count=2000)) == []


def test_markup_in_user_text_stays_plain_text(real_vocab_gguf: Path) -> None:
    llm = runtime.load(real_vocab_gguf, vocab_only=True)
    plain = runtime.tokenize(llm, "<|assistant|>[gMASK]")
    assert 151337 not in plain and 151331 not in plain
    assert runtime.tokenize(llm, "<|assistant|>[gMASK]", special=True) == [151337, 151331]


@pytest.mark.heavy
def test_chatglm_bpe_pre_tokenizer_would_mis_tokenize(
    real_vocab_gguf: Path, make_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why we write `glm4`: llama.cpp's `chatglm-bpe` splits words GLM-4 keeps whole."""
    from conftest import REAL_SHAPE

    factory.write_pre_tokenizer(monkeypatch, "chatglm-bpe")
    other = tmp_path / "other.gguf"
    convert(str(make_checkpoint(real_tokenizer=True, shape=REAL_SHAPE)), OUT_TYPES["f16"], output=other)
    good = runtime.load(real_vocab_gguf, vocab_only=True)
    bad = runtime.load(other, vocab_only=True)
    assert len(runtime.tokenize(good, " 根据")) == 1
    assert len(runtime.tokenize(bad, " 根据")) > 1


def test_the_shipped_vocabulary_is_glm4s_tokenizer(tmp_path: Path) -> None:
    """tests/data's vocabulary GGUF rebuilds GLM-4-9B-Chat's tokenizer.model byte for byte."""
    import hashlib

    from glm4_local.core.gguf.header import read_gguf_header
    from glm4_local.gguf_tools.tokenizer_check import ranks_of

    ranks = ranks_of(read_gguf_header(factory.SHIPPED_VOCAB))
    factory.write_tokenizer_model(tmp_path / "tokenizer.model", sorted(ranks, key=ranks.__getitem__))
    assert hashlib.sha256((tmp_path / "tokenizer.model").read_bytes()).hexdigest() == factory.TOKENIZER_SHA256
    assert hashlib.sha256(factory.REAL_TOKENIZER.read_bytes()).hexdigest() == factory.TOKENIZER_SHA256


def test_long_tokens_keep_all_their_bytes(real_vocab_gguf: Path) -> None:
    """GLM-4 has 227 tokens longer than 32 bytes (the longest: 512); llama-cpp-python's detokenize returns
    nothing for them, which dropped text from replies. Every one comes back whole."""
    import base64

    from glm4_local.chat.runtime import Vocabulary
    from glm4_local.core.families.glm4 import GLM4_9B

    ranks = {int(rank): base64.b64decode(token) for token, rank in
             (line.split() for line in factory.real_tokenizer().read_bytes().splitlines() if line)}
    vocab = Vocabulary(runtime.load(real_vocab_gguf, vocab_only=True), GLM4_9B)
    long_tokens = {i: t for i, t in ranks.items() if len(t) > 32}
    assert len(long_tokens) == 227
    assert all(vocab.piece(i) == token for i, token in long_tokens.items())

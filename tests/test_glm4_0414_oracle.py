"""GLM-4-0414 against implementations we did not write: transformers' Glm4ForCausalLM for the numbers, its
TikTokenConverter and the `tokenizers` library for the tokenizer, its apply_chat_template for the prompt."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from helpers import factory, glm4_0414
from helpers.tokenizers import CORPUS

from glm4_local.chat.runtime import Vocabulary
from glm4_local.chat.setup import ModelFacts
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import load_checkpoint
from glm4_local.convert.reference import ReferenceModel
from glm4_local.core.families.glm4 import PATTERN, SPECIAL_TOKENS
from glm4_local.core.families.glm4_0414 import GLM4_0414
from glm4_local.core.llama import door as runtime
from glm4_local.gguf_tools.verify import compare, top1_disagreements

torch = pytest.importorskip("torch", reason="oracle tests need torch (pip install -e '.[oracle]')")
transformers = pytest.importorskip("transformers", reason="oracle tests need transformers")
tokenizers = pytest.importorskip("tokenizers", reason="oracle tests need tokenizers (with transformers)")

pytestmark = pytest.mark.oracle
SHAPES = {"9b": factory.Shape(n_head=8, n_head_kv=1, head_dim=32), "32b": factory.Shape(n_head=6, n_head_kv=1,
                                                                                            head_dim=32, n_layer=3)}


@cache
def hf_model(folder: Path):
    return transformers.Glm4ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf_model(folder)(torch.tensor([tokens])).logits[0].numpy()


@pytest.mark.parametrize("size", SHAPES)
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_llama_cpp_matches_transformers(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path],
                                        size: str, outtype: str) -> None:
    llm = runtime.load(make_gguf(outtype, layout="glm4", shape=SHAPES[size]), n_ctx=256, logits_all=True,
                       exact_cache=True)
    folder = make_checkpoint(layout="glm4", shape=SHAPES[size])
    limits = OUT_TYPES[outtype].limits
    for prompt in GLM4_0414.probe_prompts:
        tokens = runtime.tokenize(llm, prompt, special=True)
        reference, candidate = hf_logits(folder, tokens), runtime.all_logits(llm, tokens)
        max_abs, _, kl = compare(reference, candidate)
        assert top1_disagreements(reference, candidate, limits.max_abs_error) == [], prompt
        assert max_abs <= limits.max_abs_error and kl <= limits.max_mean_kl, (max_abs, kl)


def test_numpy_reference_matches_transformers(make_checkpoint: Callable[..., Path]) -> None:
    folder = make_checkpoint(layout="glm4", shape=SHAPES["32b"], dtype="f32")
    checkpoint = load_checkpoint(str(folder))
    reference = ReferenceModel(checkpoint.family, checkpoint.spec, checkpoint.tensors, checkpoint.plan)
    tokens = list(range(3, 40, 3))
    assert np.max(np.abs(reference.logits(tokens) - hf_logits(folder, tokens))) < 1e-3


def test_the_tokenizer_json_is_what_transformers_makes_of_the_ranks(tmp_path: Path) -> None:
    tokens = factory.train_bpe(factory.CORPUS, 300)
    factory.write_tokenizer_model(tmp_path / "tokenizer.model", tokens)
    specials = {len(tokens) + i: t for i, t in enumerate(SPECIAL_TOKENS)}
    from transformers.convert_slow_tokenizer import TikTokenConverter  # the attribute is shadowed by a function

    theirs = TikTokenConverter(str(tmp_path / "tokenizer.model"), PATTERN,
                               extra_special_tokens=list(specials.values())).converted()
    ours = tokenizers.Tokenizer.from_str(__import__("json").dumps(glm4_0414.tokenizer_json(tokens, specials)))
    assert ours.get_vocab() == theirs.get_vocab()
    for text in CORPUS.values():
        assert ours.encode(text).ids == theirs.encode(text).ids, text


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=pytest.mark.heavy)], ids=["tiny", "real"])
def test_llama_cpp_tokenizes_as_the_tokenizer_json_and_prompts_as_transformers(
        make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path], real: bool) -> None:
    fields = {"layout": "glm4", "real_tokenizer": real, "template": "glm-z1-0414"}
    if real:
        fields["shape"] = factory.Shape(n_layer=1, n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=128)
    folder, path = make_checkpoint(**fields), make_gguf("f16", **fields)
    reference = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    llm = runtime.load(path, vocab_only=True)
    n_ranks = min(t["id"] for t in __import__("json").loads((folder / "tokenizer.json").read_text())["added_tokens"])
    entries = [reference.decode([i]) for i in range(n_ranks)]
    # text that spells a special token is left out: `tokenizers` makes it the special token, where llama.cpp (and
    # glm4-local, which never lets typed text open a role) keeps it text
    texts = [t for t in [*CORPUS.values(), *entries] if "\ufffd" not in t and not any(x in t for x in SPECIAL_TOKENS)]
    wrong = [t for t in texts if runtime.tokenize(llm, t) != reference.encode(t, add_special_tokens=False).ids]
    assert len(texts) > n_ranks // 2 and wrong == []
    # the whole prompt: the checkpoint's template as transformers renders it, and its tokenizer, token for token
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "system", "content": "简洁。"}, {"role": "user", "content": "  Hello world \n"},
                {"role": "assistant", "content": "<think>x</think>\n  Hi!"}, {"role": "user", "content": "再见"}]
    theirs = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    facts = ModelFacts.read(path)
    ours = Vocabulary(llm, facts.family).prompt(facts.template, messages, None)
    assert ours == list(theirs)

"""llama.cpp running our GGUFs against transformers' GlmForCausalLM, an implementation we did not write."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from helpers import factory

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import load_checkpoint
from glm4_local.convert.reference import ReferenceModel
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.llama import door as runtime
from glm4_local.gguf_tools.verify import compare, top1_disagreements

PROMPTS = GLM4_9B.probe_prompts

torch = pytest.importorskip("torch", reason="oracle tests need torch (pip install -e '.[oracle]')")
transformers = pytest.importorskip("transformers", reason="oracle tests need transformers")

pytestmark = pytest.mark.oracle


@cache
def hf_model(folder: Path):
    model = transformers.GlmForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def hf_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf_model(folder)(torch.tensor([tokens])).logits[0].numpy()


SHAPES = {
    "kv2-no-rope-ratio": factory.Shape(n_head_kv=2),
    "kv4-rope500": factory.Shape(n_head_kv=4, rope_ratio=500),
    "kv2-rope10000-3layers": factory.Shape(n_head_kv=2, rope_ratio=10000, n_layer=3),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("layout", ["chatglm", "glm"])
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
def test_llama_cpp_matches_transformers(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path],
                                        shape: factory.Shape, layout: str, outtype: str) -> None:
    gguf_path = make_gguf(outtype, layout=layout, shape=shape)
    hf_folder = make_checkpoint(layout="glm", shape=shape)  # same seed: the same weights
    llm = runtime.load(gguf_path, n_ctx=256, logits_all=True, exact_cache=True)
    limits = OUT_TYPES[outtype].limits
    for prompt in PROMPTS:
        tokens = runtime.tokenize(llm, prompt, special=True)
        reference, candidate = hf_logits(hf_folder, tokens), runtime.all_logits(llm, tokens)
        max_abs, _, kl = compare(reference, candidate)
        assert top1_disagreements(reference, candidate, limits.max_abs_error) == [], prompt
        assert max_abs <= limits.max_abs_error and kl <= limits.max_mean_kl, (max_abs, kl)


@pytest.mark.parametrize("layout", ["chatglm", "glm"])
def test_numpy_reference_matches_transformers(make_checkpoint: Callable[..., Path], layout: str) -> None:
    shape = SHAPES["kv4-rope500"]
    ckpt = load_checkpoint(str(make_checkpoint(layout=layout, shape=shape, dtype="f32")))
    reference = ReferenceModel(ckpt.family, ckpt.spec, ckpt.tensors, ckpt.plan)
    tokens = list(range(3, 40, 3))
    ours = reference.logits(tokens)
    theirs = hf_logits(make_checkpoint(layout="glm", shape=shape, dtype="f32"), tokens)
    assert np.max(np.abs(ours - theirs)) < 1e-3


@pytest.mark.heavy
def test_real_vocabulary_model_matches_transformers(real_vocab_gguf: Path,
                                                    make_checkpoint: Callable[..., Path]) -> None:
    from conftest import REAL_SHAPE

    hf_folder = make_checkpoint(layout="glm", real_tokenizer=True, shape=REAL_SHAPE)
    llm = runtime.load(real_vocab_gguf, n_ctx=256, logits_all=True, exact_cache=True)
    for prompt in PROMPTS:
        tokens = runtime.tokenize(llm, prompt, special=True)
        reference, candidate = hf_logits(hf_folder, tokens), runtime.all_logits(llm, tokens)
        assert top1_disagreements(reference, candidate, OUT_TYPES["f16"].limits.max_abs_error) == []
        assert compare(reference, candidate)[0] <= OUT_TYPES["f16"].limits.max_abs_error

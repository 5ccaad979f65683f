"""Conversion: metadata, tensors and logits of real GGUF files, loaded by llama.cpp."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from helpers import factory

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert, load_checkpoint
from glm4_local.convert.reference import ReferenceModel
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.llama import door as runtime
from glm4_local.gguf_tools.verify import compare, verify

PROMPTS = GLM4_9B.probe_prompts

K = gguf.Keys


def field(reader: gguf.GGUFReader, key: str) -> object:
    f = reader.get_field(key)
    return None if f is None else f.contents()


def tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def test_metadata_is_complete(make_gguf: Callable[..., Path]) -> None:
    reader = gguf.GGUFReader(make_gguf("f16"))
    s = factory.Shape()
    arch = "chatglm"
    n_ranks = factory.vocabulary(factory.Spec())[1]
    assert field(reader, K.General.ARCHITECTURE) == arch
    assert field(reader, K.General.NAME) == "glm-4-tiny"
    assert field(reader, K.General.FILE_TYPE) == gguf.LlamaFileType.MOSTLY_F16
    expected = {
        K.LLM.BLOCK_COUNT: s.n_layer, K.LLM.EMBEDDING_LENGTH: s.n_embd, K.LLM.FEED_FORWARD_LENGTH: s.n_ff,
        K.Attention.HEAD_COUNT: s.n_head, K.Attention.HEAD_COUNT_KV: s.n_head_kv,
        K.Rope.DIMENSION_COUNT: s.head_dim // 2, K.LLM.CONTEXT_LENGTH: s.context,
    }
    for key, value in expected.items():
        assert field(reader, key.format(arch=arch)) == value, key
    assert field(reader, K.Rope.FREQ_BASE.format(arch=arch)) == pytest.approx(10000.0)
    assert field(reader, K.Attention.LAYERNORM_RMS_EPS.format(arch=arch)) == pytest.approx(1.5625e-07)
    assert field(reader, K.Tokenizer.EOS_ID) == n_ranks
    assert field(reader, K.Tokenizer.EOT_ID) == n_ranks + 7
    assert field(reader, K.Tokenizer.PAD_ID) == n_ranks
    assert field(reader, K.Tokenizer.ADD_BOS) is False
    assert field(reader, K.Tokenizer.BOS_ID) is None
    assert field(reader, K.Tokenizer.PRE) == "glm4"
    assert field(reader, K.General.SAMPLING_TEMP) == pytest.approx(0.8)
    assert field(reader, K.General.SAMPLING_TOP_P) == pytest.approx(0.8)
    assert field(reader, K.Tokenizer.CHAT_TEMPLATE) == factory.tokenizer_config(0)["chat_template"]


@pytest.mark.parametrize("rope_ratio,base", [(None, 10000.0), (500, 5e6), (10000, 1e8)])
def test_rope_base_follows_rope_ratio(make_gguf: Callable[..., Path], rope_ratio: float | None, base: float) -> None:
    shape = factory.Shape(rope_ratio=rope_ratio)
    for layout in ("chatglm", "glm"):
        reader = gguf.GGUFReader(make_gguf("f32", layout=layout, shape=shape))
        assert field(reader, K.Rope.FREQ_BASE.format(arch="chatglm")) == pytest.approx(base)


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_both_layouts_and_shardings_give_identical_tensors(make_gguf: Callable[..., Path], outtype: str) -> None:
    original = tensor_bytes(make_gguf(outtype))
    assert tensor_bytes(make_gguf(outtype, layout="glm")) == original
    assert tensor_bytes(make_gguf(outtype, shards=3)) == original
    assert tensor_bytes(make_gguf(outtype, layout="glm", shards=2)) == original


def test_f32_tensors_hold_the_checkpoint_values_exactly(make_gguf: Callable[..., Path]) -> None:
    weights = factory.stored_weights(factory.Spec())
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(make_gguf("f32")).tensors}
    assert np.array_equal(tensors["token_embd.weight"], weights["model.embed_tokens.weight"])
    qkv = np.concatenate([weights[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert np.array_equal(tensors["blk.1.attn_qkv.weight"], qkv)
    assert np.array_equal(tensors["blk.0.ffn_up.weight"], weights["model.layers.0.mlp.gate_up_proj.weight"])
    assert tensors["blk.0.attn_qkv.bias"].dtype == np.float32


def test_bf16_output_of_bf16_checkpoint_is_a_byte_copy(make_gguf: Callable[..., Path],
                                                       make_checkpoint: Callable[..., Path]) -> None:
    from glm4_local.convert.safetensors import SafetensorsCheckpoint, find_weight_files

    ckpt = SafetensorsCheckpoint(find_weight_files(make_checkpoint()))
    reader = gguf.GGUFReader(make_gguf("bf16"))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    source = ckpt.raw("transformer.embedding.word_embeddings.weight")
    assert embd.data.tobytes() == source.tobytes()


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    return runtime.all_logits(runtime.load(path, n_ctx=256, logits_all=True, exact_cache=True), tokens)


def prompt_tokens(path: Path) -> list[list[int]]:
    llm = runtime.load(path, vocab_only=True)
    return [runtime.tokenize(llm, p, special=True) for p in PROMPTS]


@pytest.mark.parametrize("outtype", sorted(OUT_TYPES))
def test_every_output_type_runs_within_its_limits(make_gguf: Callable[..., Path],
                                                  make_checkpoint: Callable[..., Path], outtype: str) -> None:
    path = make_gguf(outtype)
    report = verify(path, str(make_checkpoint()))
    print(f"{outtype}: max_abs={report.max_abs_error:.4f} top1={report.top1_agreement:.4f} kl={report.mean_kl:.2e}")
    assert report.file_type == OUT_TYPES[outtype].label
    assert report.passed, report
    if outtype in ("f32", "f16", "bf16"):
        assert report.top1_agreement == 1.0


@pytest.mark.parametrize("outtype", ["q4_k_m", "q6_k"])
def test_k_quants_actually_quantize(make_gguf: Callable[..., Path], outtype: str) -> None:
    types = {t.tensor_type.name for t in gguf.GGUFReader(make_gguf(outtype)).tensors}
    assert types & {"Q4_K", "Q6_K", "Q5_K"}, types
    assert make_gguf(outtype).stat().st_size < make_gguf("f16").stat().st_size * 0.6


@pytest.mark.parametrize("kv,rope_ratio", [(2, None), (4, 500), (1, 10000)])
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_shapes_and_dtypes_agree_with_numpy_reference(make_gguf: Callable[..., Path],
                                                       make_checkpoint: Callable[..., Path],
                                                       kv: int, rope_ratio: float | None, dtype: str) -> None:
    fields = {"dtype": dtype, "shape": factory.Shape(n_head_kv=kv, rope_ratio=rope_ratio)}
    path = make_gguf("f32", **fields)
    ckpt = load_checkpoint(str(make_checkpoint(**fields)))
    reference = ReferenceModel(ckpt.family, ckpt.spec, ckpt.tensors, ckpt.plan)
    for tokens in prompt_tokens(path):
        max_abs, top1, _ = compare(reference.logits(tokens), llama_logits(path, tokens))
        assert top1 == 1.0
        assert max_abs <= OUT_TYPES["f32"].limits.max_abs_error


def test_default_output_path_and_no_overwrite(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    result = convert(str(make_checkpoint()), OUT_TYPES["q8_0"], models_dir=tmp_path / "models")
    assert result.path == tmp_path / "models" / "glm-4-tiny-Q8_0.gguf"
    from glm4_local.core.errors import OutputError

    with pytest.raises(OutputError, match="already exists"):
        convert(str(make_checkpoint()), OUT_TYPES["q8_0"], models_dir=tmp_path / "models")
    convert(str(make_checkpoint()), OUT_TYPES["q8_0"], models_dir=tmp_path / "models", force=True)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["glm-4-tiny-Q8_0.gguf"]


def test_quantized_conversion_leaves_no_temporary_file(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    convert(str(make_checkpoint()), OUT_TYPES["q4_0"], output=out)
    assert [p.name for p in out.parent.iterdir()] == ["m.gguf"]


def test_base_model_without_chat_template_or_generation_config(make_checkpoint: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    """glm-4-9b (base): no chat template, no generation defaults, no rope_ratio."""
    import shutil

    folder = Path(shutil.copytree(make_checkpoint(), tmp_path / "glm-4-9b-tiny"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").unlink()
    reader = gguf.GGUFReader(convert(str(folder), OUT_TYPES["f16"], output=tmp_path / "base.gguf").path)
    assert field(reader, K.Tokenizer.CHAT_TEMPLATE) is None
    assert field(reader, K.General.SAMPLING_TEMP) is None
    assert field(reader, K.General.NAME) == "glm-4-9b-tiny"
    assert field(reader, K.Rope.FREQ_BASE.format(arch="chatglm")) == pytest.approx(10000.0)


@pytest.mark.heavy
@pytest.mark.parametrize("outtype", sorted(OUT_TYPES))
def test_real_vocabulary_model_every_output_type(make_gguf: Callable[..., Path],
                                                 make_checkpoint: Callable[..., Path], outtype: str) -> None:
    """The 9B model's own vocabulary (151552 rows, bf16, sharded) through every output type."""
    if not factory.REAL_TOKENIZER.is_file():
        pytest.skip(f"GLM-4 reference files not found at {factory.REAL_TOKENIZER.parent}")
    fields = {"real_tokenizer": True, "shards": 3, "shape": factory.Shape(n_layer=2, n_head_kv=2)}
    report = verify(make_gguf(outtype, **fields), str(make_checkpoint(**fields)))
    print(f"real vocab {outtype}: max_abs={report.max_abs_error:.4f} top1={report.top1_agreement:.4f} "
          f"kl={report.mean_kl:.2e}")
    assert report.passed, report

"""llama.cpp's quantizer, driven through convert: importance matrices and failure reporting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from glm4_local.convert.imatrix import load_imatrix
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.core.errors import Glm4LocalError
from glm4_local.gguf_tools.verify import verify


def write_imatrix(path: Path, gguf_path: Path, seed: int = 0) -> None:
    """An importance matrix in llama-imatrix's GGUF layout for every 2-D weight of `gguf_path`."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "imatrix")
    for tensor in gguf.GGUFReader(gguf_path).tensors:
        if len(tensor.shape) == 2 and tensor.name != "token_embd.weight":
            n_per_row = int(tensor.shape[0])
            sums = rng.gamma(0.5, 2.0, n_per_row).astype(np.float32) * 100
            writer.add_tensor(f"{tensor.name}.in_sum2", sums)
            writer.add_tensor(f"{tensor.name}.counts", np.array([100.0], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_imatrix_changes_the_quantization(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path],
                                          tmp_path: Path) -> None:
    imatrix = tmp_path / "m.imatrix"
    write_imatrix(imatrix, make_gguf("f16"))
    values = load_imatrix(imatrix)
    assert "blk.0.ffn_down.weight" in values and values["blk.0.ffn_down.weight"].shape == (512,)
    with_imatrix = convert(str(make_checkpoint()), OUT_TYPES["q4_k_m"], output=tmp_path / "i.gguf",
                           imatrix=imatrix).path
    plain = make_gguf("q4_k_m")
    assert with_imatrix.read_bytes() != plain.read_bytes()
    assert verify(with_imatrix, str(make_checkpoint())).passed


def test_bad_imatrix_is_one_clear_error(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "junk.imatrix").write_bytes(b"not an imatrix")
    with pytest.raises(Glm4LocalError, match=r"junk\.imatrix"):
        convert(str(make_checkpoint()), OUT_TYPES["q4_0"], output=tmp_path / "o.gguf",
                imatrix=tmp_path / "junk.imatrix")
    assert not (tmp_path / "o.gguf").exists()
    with pytest.raises(Glm4LocalError, match="imatrix file not found"):
        convert(str(make_checkpoint()), OUT_TYPES["q4_0"], output=tmp_path / "o.gguf", imatrix=tmp_path / "none")


def test_imatrix_auto_measures_saves_and_uses_one(make_gguf: Callable[..., Path],
                                                  make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "auto.gguf"
    convert(str(make_checkpoint()), OUT_TYPES["q4_k_m"], output=out, imatrix="auto")
    saved = tmp_path / "auto.imatrix"
    values = load_imatrix(saved)
    layer_weights = {t.name for t in gguf.GGUFReader(make_gguf("f16")).tensors
                     if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2}
    assert set(values) == layer_weights
    assert all(v.min() > 0 and np.isfinite(v).all() for v in values.values())
    assert out.read_bytes() != make_gguf("q4_k_m").read_bytes()
    assert verify(out, str(make_checkpoint())).passed
    again = convert(str(make_checkpoint()), OUT_TYPES["q4_k_m"], output=tmp_path / "reuse.gguf", imatrix=saved).path
    assert again.read_bytes() == out.read_bytes()  # the saved matrix is the one that was used
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.gguf", "auto.imatrix", "reuse.gguf"]


def test_imatrix_only_for_quantizer_types(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(Glm4LocalError, match=r"only applies to types llama\.cpp's quantizer makes"):
        convert(str(make_checkpoint()), OUT_TYPES["q8_0"], output=tmp_path / "o.gguf", imatrix="auto")
    assert list(tmp_path.iterdir()) == []


def test_measured_importance_is_the_mean_square_of_each_input(make_gguf: Callable[..., Path]) -> None:
    """Cross-check one weight against its input computed by hand: the attention norm's output."""
    from glm4_local.convert.imatrix import compute_imatrix
    from glm4_local.core.llama import door

    path = make_gguf("f32")
    text = "Hello world, 你好世界. def main(): return 42"
    importance = compute_imatrix(path, text, chunk_size=64)
    reader = gguf.GGUFReader(path)
    weights = {t.name: np.asarray(t.data) for t in reader.tensors}
    tokens = door.tokenize(door.load(path, vocab_only=True), text)
    x = weights["token_embd.weight"][tokens].astype(np.float64)
    eps = float(reader.get_field(gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch="chatglm")).contents())
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weights["blk.0.attn_norm.weight"]
    expected = np.mean(normed**2, axis=0)
    assert importance.rows["blk.0.attn_qkv.weight"] == len(tokens)
    np.testing.assert_allclose(importance.values()["blk.0.attn_qkv.weight"], expected, rtol=1e-4)

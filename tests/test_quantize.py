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
from glm4_local.convert.verify import verify
from glm4_local.core.errors import Glm4LocalError


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

"""Bad input: one line on stderr naming the file and the problem, non-zero exit, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import children
from helpers.cli import SLOW_CONVERT, cli, one_line_error
from helpers.marks import cases
from typer.testing import CliRunner

from glm4_local.cli import app

runner = CliRunner()


def copy_checkpoint(make_checkpoint: Callable[..., Path], dest: Path, **fields: object) -> Path:
    return Path(shutil.copytree(make_checkpoint(**fields), dest / "ckpt"))


def convert_fails(args: list[str], *expected: str, code: int = 1) -> str:
    result = runner.invoke(app, ["convert", *args, "-q"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


def assert_no_output(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.suffix == ".gguf" or ".tmp" in p.name
            or p.name.endswith(".16bit")] == []


def test_missing_folder(tmp_path: Path) -> None:
    convert_fails([str(tmp_path / "nope"), "-o", str(tmp_path / "o.gguf")], "nope", "no such folder")
    assert_no_output(tmp_path)


def test_uncached_repo_id_says_how_to_download(tmp_path: Path) -> None:
    convert_fails(["THUDM/glm-4-9b-chat"], "THUDM/glm-4-9b-chat", "--download", "Hugging Face cache")


def test_missing_config(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    (ckpt / "config.json").unlink()
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "config.json", "missing")
    assert_no_output(tmp_path)


def test_config_not_json(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    (ckpt / "config.json").write_text("{not json")
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "config.json", "not valid JSON")


@pytest.mark.parametrize("model_type,expected", [("llama", "unsupported architecture"), ("glm4_moe", "'glm4_moe'")])
def test_unknown_architecture(make_checkpoint: Callable[..., Path], tmp_path: Path, model_type: str,
                              expected: str) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type=model_type, architectures=["LlamaForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(config))
    message = convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "config.json", expected)
    assert "supported: GLM-4 in the original layout" in message and "GLM-4-0414 (model_type 'glm4'" in message


def test_pickle_only_weights(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "pytorch_model.bin", "only safetensors")


@pytest.mark.parametrize("damage,expected", [
    (lambda b: b[:4], "truncated safetensors file"),
    (lambda b: (10**12).to_bytes(8, "little") + b[8:], "corrupt safetensors header"),
    (lambda b: b[:8] + b"X" + b[9:], "not JSON"),
    (lambda b: b[: len(b) // 2], "truncated safetensors file"),
])
def test_corrupt_safetensors(make_checkpoint: Callable[..., Path], tmp_path: Path,
                             damage: Callable[[bytes], bytes], expected: str) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "model.safetensors", expected)
    assert_no_output(tmp_path)


def rewrite_tensors(ckpt: Path, change: Callable[[dict], None], dtype: str = "bf16") -> None:
    from helpers import factory

    from glm4_local.convert.safetensors import SafetensorsCheckpoint

    st = SafetensorsCheckpoint([ckpt / "model.safetensors"])
    tensors = {n: st.f32(n) for n in st.entries}
    st.close()
    change(tensors)
    factory.write_safetensors(ckpt / "model.safetensors", tensors, dtype)


@pytest.mark.parametrize("change,expected", [
    (lambda t: t.pop("transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"), "is missing"),
    (lambda t: t.update({"transformer.encoder.layers.7.extra.weight": t["transformer.encoder.final_layernorm.weight"]}),
     "unexpected tensor"),
    (lambda t: t.update({"transformer.encoder.layers.0.self_attention.dense.weight":
                         t["transformer.encoder.layers.0.self_attention.dense.weight"][:, :128]}), "has shape"),
])
def test_tensor_missing_unexpected_or_misshapen(make_checkpoint: Callable[..., Path], tmp_path: Path,
                                                change: Callable[[dict], None], expected: str) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    rewrite_tensors(ckpt, change)
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], str(ckpt), expected)


def test_unsupported_dtype(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    raw = (ckpt / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + header_len].replace(b'"BF16"', b'"I16" ', 1)
    (ckpt / "model.safetensors").write_bytes(raw[:8] + header + raw[8 + header_len :])
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "model.safetensors", "unsupported dtype I16")


def test_missing_tokenizer(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    (ckpt / "tokenizer.model").unlink()
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "tokenizer.model", "missing")


def test_sentencepiece_tokenizer_is_refused(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    (ckpt / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    convert_fails([str(ckpt), "-o", str(tmp_path / "o.gguf")], "tokenizer.model", "ChatGLM2/3")


def test_existing_output_needs_force(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "o.gguf").write_text("keep me")
    convert_fails([str(make_checkpoint()), "-o", str(tmp_path / "o.gguf")], "o.gguf", "--force")
    assert (tmp_path / "o.gguf").read_text() == "keep me"


def test_unknown_outtype(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    convert_fails([str(make_checkpoint()), "-t", "q3_k_s"], "q3_k_s", "q4_k_m")


def without_file_permission_override(cmd: list[str]) -> list[str]:
    """As root, permissions only bind once the capabilities that override them are dropped."""
    if os.geteuid() != 0:
        return cmd
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]


def run_cli(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(without_file_permission_override([sys.executable, "-m", "glm4_local", *args]),
                          capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root without setpriv")
def test_unreadable_folder_and_unwritable_output(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(make_checkpoint, tmp_path)
    ckpt.chmod(0)
    try:
        result = run_cli(["convert", str(ckpt), "-o", str(tmp_path / "o.gguf"), "-q"])
    finally:
        ckpt.chmod(0o755)
    assert result.returncode == 1 and "not readable" in result.stderr and "Traceback" not in result.stderr
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run_cli(["convert", str(ckpt), "-o", str(locked / "o.gguf"), "-q"])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"glm4-local: error: {locked}: output folder is not writable"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.processes
@pytest.mark.parametrize("outtype", ["f32", "q4_0"])
def test_disk_full(make_checkpoint: Callable[..., Path], tiny_disk: Path, outtype: str) -> None:
    message = convert_fails([str(make_checkpoint()), "-t", outtype, "-o", str(tiny_disk / "o.gguf")],
                            "o.gguf", "disk full")
    assert "Traceback" not in message
    assert list(tiny_disk.iterdir()) == []





@pytest.mark.processes
@pytest.mark.parametrize(("number", "message"), [
    (signal.SIGINT, "interrupted; no output file was left behind"),
    (signal.SIGTERM, "SIGTERM: stopped; no output file was left behind"),
    (signal.SIGHUP, "SIGHUP: stopped; no output file was left behind"),
])
def test_ctrl_c_while_writing_leaves_nothing(make_checkpoint: Callable[..., Path], tmp_path: Path,
                                            number: int, message: str) -> None:
    """Ctrl-C, `kill` and a closed terminal all clean up: no half file (the 9B model's is ~19 GB)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = children.started(subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERT, "convert", str(make_checkpoint()), "-t", "f32",
         "-o", str(out_dir / "o.gguf"), "-q"], stderr=subprocess.PIPE, text=True,
        preexec_fn=children.default_signals))
    deadline = time.monotonic() + 60
    while not list(out_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(out_dir.iterdir()), "conversion never started writing"
    time.sleep(0.3)
    proc.send_signal(number)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + number
    assert stderr.strip() == f"glm4-local: error: {message}"
    assert list(out_dir.iterdir()) == []


SLOW_QUANTIZE = """
import sys, time
import llama_cpp
def stuck(src, dst, params):
    open(dst, "wb").write(b"partial")
    time.sleep(60)
    return 0
llama_cpp.llama_model_quantize = stuck
from glm4_local.cli import app
sys.argv = ["glm4-local", *sys.argv[1:]]
app()
"""


@pytest.mark.processes
def test_ctrl_c_while_quantizing_leaves_nothing(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = children.started(subprocess.Popen(
        [sys.executable, "-c", SLOW_QUANTIZE, "convert", str(make_checkpoint()), "-t", "q4_0",
         "-o", str(out_dir / "o.gguf"), "-q"], stderr=subprocess.PIPE, text=True,
        preexec_fn=children.default_signals))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = [p for p in out_dir.iterdir() if p.stat().st_size == len(b"partial")]
        if files:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert list(out_dir.iterdir()) == []


@pytest.mark.processes
def test_ctrl_c_late_in_imatrix_auto_says_the_matrix_was_kept(make_checkpoint: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    """Interrupted while quantizing with `--imatrix auto`: the measured matrix is kept (it took minutes),
    and the message says so instead of claiming nothing was left behind."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = children.started(subprocess.Popen(
        [sys.executable, "-c", SLOW_QUANTIZE, "convert", str(make_checkpoint()), "-t", "q4_0", "--imatrix", "auto",
         "-o", str(out_dir / "o.gguf"), "-q"], stderr=subprocess.PIPE, text=True,
        preexec_fn=children.default_signals))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.stat().st_size == len(b"partial") for p in out_dir.iterdir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "kept as" in stderr and "o.imatrix" in stderr and "no GGUF was left behind" in stderr
    assert [p.name for p in out_dir.iterdir()] == ["o.imatrix"]


def test_a_corrupt_imatrix_file_is_one_line(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "bad.imatrix").write_bytes(b"GGUF")
    result = runner.invoke(app, ["convert", str(make_checkpoint()), "-t", "q4_0", "--imatrix",
                                 str(tmp_path / "bad.imatrix"), "-o", str(tmp_path / "o.gguf")])
    assert result.exit_code == 1 and "not a GGUF imatrix file" in result.stderr, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.imatrix"]


# -- config.json (in a child: an abort in llama.cpp fails the test, not pytest) ----------------------

BAD_CONFIGS = {
    "hidden_size text": {"hidden_size": "256"}, "hidden_size null": {"hidden_size": None},
    "hidden_size list": {"hidden_size": [256]}, "hidden_size inf": {"hidden_size": float("inf")},
    "huge integer text": {"ffn_hidden_size": "9" * 400}, "eps text": {"layernorm_epsilon": "1e-5"},
    "rope_ratio text": {"rope_ratio": "500"}, "rope_ratio NaN": {"rope_ratio": float("nan")},
    "seq_length 2^32": {"seq_length": 2**32}, "num_layers 10^9": {"num_layers": 10**9},
}


@pytest.mark.parametrize("case", cases(BAD_CONFIGS, {"hidden_size text", "rope_ratio NaN", "num_layers 10^9"}))
def test_bad_config_values_are_one_line_and_quick(make_checkpoint: Callable[..., Path], tmp_path: Path,
                                                   case: str) -> None:
    import shutil

    folder = Path(shutil.copytree(make_checkpoint(), tmp_path / "ckpt"))
    config = json.loads((folder / "config.json").read_text())
    config.update(BAD_CONFIGS[case])
    (folder / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    one_line_error(cli("convert", str(folder), "-t", "f16", "-o", str(tmp_path / "o.gguf")), "config.json")
    assert time.monotonic() - started < 20 and not (tmp_path / "o.gguf").exists()


def test_deeply_nested_config(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(make_checkpoint(), tmp_path / "ckpt"))
    (folder / "config.json").write_text("[" * 100000 + "]" * 100000)
    one_line_error(cli("convert", str(folder), "-o", str(tmp_path / "o.gguf")), "config.json")

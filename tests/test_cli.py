"""The commands a user types, run for real: convert, info, verify."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from helpers import factory
from typer.testing import CliRunner

from glm4_local.cli import app
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert

runner = CliRunner()


def test_convert_default_path_in_models(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(make_checkpoint()), "--outtype", "q4_k_m"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "models/glm-4-tiny-Q4_K_M.gguf"
    assert "wrote models/glm-4-tiny-Q4_K_M.gguf" in result.stderr
    assert (tmp_path / "models" / "glm-4-tiny-Q4_K_M.gguf").is_file()


def test_convert_quiet_prints_only_the_path(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(make_checkpoint()), "-t", "f16", "-o", "x.gguf", "-q"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "x.gguf\n", "")


@pytest.mark.processes
def test_console_script_runs(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "glm4_local", "convert", str(make_checkpoint()), "-t", "q8_0",
                           "-o", str(tmp_path / "s.gguf")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.gguf").is_file()


def test_info_describes_the_file(make_gguf: Callable[..., Path]) -> None:
    result = runner.invoke(app, ["info", str(make_gguf("q8_0"))])
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for expected in ("architecture: chatglm", "file type: Q8_0", "context length: 4096", "pre-tokenizer glm4",
                     "<|endoftext|>=", "<|user|>=", "chat template: yes", "parameters: ",
                     "sampling: temperature 0.8, top_p 0.8"):
        assert expected in text, text
    assert result.stderr == ""


def test_info_json(make_gguf: Callable[..., Path]) -> None:
    result = runner.invoke(app, ["info", str(make_gguf("f16")), "--json"])
    data = json.loads(result.stdout)
    assert data["architecture"] == "chatglm" and data["warnings"] == []
    reader = gguf.GGUFReader(make_gguf("f16"))
    assert data["parameters"] == sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert data["vocab_size"] == len(reader.get_field(gguf.Keys.Tokenizer.LIST).data)


def test_info_flags_a_mis_tokenizing_gguf(make_checkpoint: Callable[..., Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    factory.write_pre_tokenizer(monkeypatch, "chatglm-bpe")
    convert(str(make_checkpoint()), OUT_TYPES["f16"], output=tmp_path / "other.gguf")
    result = runner.invoke(app, ["info", str(tmp_path / "other.gguf")])
    assert result.exit_code == 0
    assert "warning: pre-tokenizer 'chatglm-bpe' mis-tokenizes GLM-4" in result.stderr


def test_info_on_corrupt_and_foreign_files(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(make_gguf("f16").read_bytes()[:4000])
    result = runner.invoke(app, ["info", str(truncated)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "cut.gguf" in result.stderr
    (tmp_path / "text.gguf").write_text("hello")
    result = runner.invoke(app, ["info", str(tmp_path / "text.gguf")])
    assert result.exit_code == 1 and "not a GGUF file" in result.stderr
    foreign = factory.write_foreign_gguf(tmp_path / "llama.gguf")
    result = runner.invoke(app, ["info", str(foreign)])
    assert result.exit_code == 0 and "architecture 'llama' is not GLM-4" in result.stderr


def test_verify_passes_and_fails(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path]) -> None:
    good = runner.invoke(app, ["verify", str(make_gguf("q8_0")), "--source", str(make_checkpoint())])
    assert good.exit_code == 0, good.stderr
    assert "max abs error" in good.stdout and "mean KL" in good.stdout and good.stdout.endswith("OK\n")
    wrong = runner.invoke(app, ["verify", str(make_gguf("q8_0")), "--source", str(make_checkpoint(seed=5))])
    assert wrong.exit_code == 2
    assert "disagrees with the reference beyond the Q8_0 limits" in wrong.stderr


def test_verify_refuses_a_foreign_gguf(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    foreign = tmp_path / "x.gguf"
    foreign.write_bytes(b"GGUF" + b"\0" * 20)
    result = runner.invoke(app, ["verify", str(foreign), "--source", str(make_checkpoint())])
    assert result.exit_code == 1 and "x.gguf" in result.stderr and "Traceback" not in result.stderr


def test_info_flags_incomplete_merges(make_checkpoint: Callable[..., Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another converter's merges (one split per token) make llama.cpp diverge from tiktoken."""
    from glm4_local.convert import vocab

    full = vocab.bpe_merges

    def one_split_per_token(ranks: dict[bytes, int]) -> list[str]:
        seen: set[str] = set()
        kept = []
        for merge in full(ranks):
            made = merge.replace(" ", "")
            if made not in seen:
                seen.add(made)
                kept.append(merge)
        return kept

    with monkeypatch.context() as patch:
        patch.setattr(vocab, "bpe_merges", one_split_per_token)
        convert(str(make_checkpoint()), OUT_TYPES["f16"], output=tmp_path / "partial.gguf")
    result = runner.invoke(app, ["info", str(tmp_path / "partial.gguf")])
    assert result.exit_code == 0
    assert "warning: merges leave out" in result.stderr, result.stderr


def test_chat_and_serve_offer_the_same_tool_flags_from_one_declaration() -> None:
    import dataclasses

    import typer.main

    from glm4_local.server.options import ServeOptions
    from glm4_local.tools.options import ToolOptions

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    flags = {name: {tuple(p.opts): (p.help, p.default) for p in commands[name].params} for name in ("chat", "serve")}
    for item in dataclasses.fields(ToolOptions):
        if "flag" not in item.metadata:
            continue
        declared = (item.metadata["help"], item.default)
        assert flags["chat"][item.metadata["flag"]] == declared
        if item.name != "unconfined":  # asking before each run needs a terminal: the chat's alone
            assert flags["serve"][item.metadata["flag"]] == declared
    for item in dataclasses.fields(ServeOptions):
        if "flag" in item.metadata:
            assert flags["serve"][item.metadata["flag"]][0] == item.metadata["help"]
    assert ("--python-unconfined",) not in flags["serve"]

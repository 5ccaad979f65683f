"""`eval`: a quantized GGUF against its parent, in llama.cpp, on the built-in or a user's text."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glm4_local.cli import app
from glm4_local.convert.texts import eval_text
from glm4_local.core.llama import door
from glm4_local.gguf_tools.evaluate import evaluate, windows
from glm4_local.gguf_tools.verify import compare

runner = CliRunner()


def test_a_file_against_itself_is_identical(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf("f16")
    report = evaluate(path, path, ctx=256)
    assert report.tokens > 1000
    assert report.mean_kl == pytest.approx(0.0, abs=1e-12) and report.max_kl == pytest.approx(0.0, abs=1e-12)
    assert report.top1_agreement == 1.0 and report.perplexity == report.reference_perplexity
    assert report.delta_p["min"] == report.delta_p["max"] == 0.0


def test_coarser_types_drift_further(make_gguf: Callable[..., Path]) -> None:
    reference = make_gguf("f32")
    q8, q4 = evaluate(make_gguf("q8_0"), reference, ctx=256), evaluate(make_gguf("q4_0"), reference, ctx=256)
    assert 0 < q8.mean_kl < q4.mean_kl and q8.max_kl < q4.max_kl
    assert q8.top1_agreement >= q4.top1_agreement


def test_kl_matches_a_direct_computation_from_llama_cpp_logits(make_gguf: Callable[..., Path]) -> None:
    model, reference, ctx = make_gguf("q4_0"), make_gguf("f32"), 128
    text = eval_text()[:1500]
    report = evaluate(model, reference, text, ctx=ctx)
    ref_llm = door.load(reference, n_ctx=ctx, logits_all=True)
    model_llm = door.load(model, n_ctx=ctx, logits_all=True)
    ref_logits, model_logits, targets = [], [], []
    for window in windows(door.tokenize(ref_llm, text), ctx):
        ref_logits.append(door.all_logits(ref_llm, window)[:-1])
        model_logits.append(door.all_logits(model_llm, window)[:-1])
        targets += window[1:]
    p, q = np.concatenate(ref_logits), np.concatenate(model_logits)
    _, top1, kl = compare(p, q)
    assert report.tokens == len(targets)
    assert report.mean_kl == pytest.approx(kl, rel=1e-6) and report.top1_agreement == pytest.approx(top1)
    log_q = q - np.log(np.exp(q - q.max(-1, keepdims=True)).sum(-1, keepdims=True)) - q.max(-1, keepdims=True)
    nll = -log_q[np.arange(len(targets)), targets]
    assert report.perplexity == pytest.approx(float(np.exp(nll.mean())), rel=1e-5)


def test_eval_command(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. 你好，世界。" * 20, encoding="utf-8")
    result = runner.invoke(app, ["eval", str(make_gguf("q8_0")), "--reference", str(make_gguf("f16")),
                                 "--text", str(text), "--ctx", "64", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"mean_kl", "max_kl", "top1_agreement", "perplexity", "reference_perplexity", "tokens"} <= set(data)
    assert data["tokens"] > 100 and 0 <= data["mean_kl"] <= data["max_kl"]
    plain = runner.invoke(app, ["eval", str(make_gguf("q8_0")), "--reference", str(make_gguf("f16")), "--text",
                                str(text), "--ctx", "64"])
    assert "mean KL" in plain.stdout and "top-1 agreement" in plain.stdout


def test_eval_errors_are_one_line(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    other_vocab = make_gguf("f16", extra_tokens=("lookup", "{}", "Sunny", " day"))
    for args, part in (
        (["--text", str(tmp_path / "none.txt")], "no such file"),
        (["--ctx", "1"], "nothing to score"),
    ):
        result = runner.invoke(app, ["eval", str(make_gguf("q8_0")), "--reference", str(make_gguf("f16")), *args])
        assert result.exit_code == 1 and part in result.stderr and result.stderr.count("\n") == 1, result.stderr
    result = runner.invoke(app, ["eval", str(make_gguf("q8_0")), "--reference", str(other_vocab)])
    assert result.exit_code == 1 and "vocabulary differs" in result.stderr

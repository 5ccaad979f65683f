"""GGUFs that are right in every llama.cpp runtime: stop tokens, and `repair` of GGUFs made elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from helpers import factory
from typer.testing import CliRunner

from glm4_local.cli import app
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.gguf.checks import open_gguf
from glm4_local.core.llama import door
from glm4_local.gguf_tools.repair import repair
from glm4_local.gguf_tools.summary import summarize

K = gguf.Keys
runner = CliRunner()


def tensor_bytes(path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    return {t.name: data[t.offset : t.offset + t.n_bytes] for t in open_gguf(path).tensors}


def special_id(llm: object, text: str) -> int:
    return door.tokenize(llm, text, special=True)[0]


def test_converted_gguf_stops_on_every_glm4_stop_token_in_plain_llama_cpp(make_gguf: Callable[..., Path]) -> None:
    path = make_gguf("q8_0")
    llm = door.load(path, vocab_only=True)
    stops = [special_id(llm, t) for t in GLM4_9B.stop_tokens]
    assert door.end_of_generation(llm, list(range(llm.n_vocab()))) == sorted(stops)
    summary = summarize(path)
    assert set(summary.end_of_generation) == set(GLM4_9B.stop_tokens) and summary.warnings == []
    assert "stops on: <|endoftext|>" in runner.invoke(app, ["info", str(path)]).stdout


def test_community_gguf_is_flagged_and_repaired(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    ours = make_gguf("q8_0")
    theirs = factory.write_community_gguf(ours, tmp_path / "community.gguf")
    info = runner.invoke(app, ["info", str(theirs)])
    assert "does not end generation on <|observation|>" in info.stderr
    assert "pre-tokenizer 'chatglm-bpe'" in info.stderr and "run glm4-local repair" in info.stderr
    assert "sampling: none in the file (chat uses GLM-4-9B's own: temperature 0.8, top_p 0.8)" in info.stdout

    result = runner.invoke(app, ["repair", str(theirs)])
    assert result.exit_code == 0, result.stderr
    fixed = tmp_path / "community-repaired.gguf"
    assert result.stdout == f"{fixed}\n"
    for change in ("pre-tokenizer 'chatglm-bpe' -> 'glm4'", "merges rebuilt", "eom_token_id = <|observation|>",
                   "no BOS", "chat template added (glm-4-9b-chat's)", "sampling default temperature"):
        assert change in result.stderr, result.stderr
    assert "tokenizer check: all" in result.stderr
    assert tensor_bytes(fixed) == tensor_bytes(ours)
    repaired, original = open_gguf(fixed), open_gguf(ours)
    for key in (K.Tokenizer.PRE, K.Tokenizer.MERGES, K.Tokenizer.LIST, K.Tokenizer.EOM_ID, K.Tokenizer.EOS_ID,
                K.Tokenizer.EOT_ID, K.Tokenizer.ADD_BOS):
        assert repaired.get(key) == original.get(key), key
    assert summarize(fixed).warnings == []

    again = runner.invoke(app, ["repair", str(fixed)])
    assert again.exit_code == 0 and "already right; nothing written" in again.stderr and again.stdout == ""


def test_repair_leaves_a_right_file_alone(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    report = repair(make_gguf("f16"), tmp_path / "never.gguf")
    assert report.output is None and report.changes == [] and report.check is not None and report.check.exact
    assert not (tmp_path / "never.gguf").exists()


def test_repair_output_rules(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    theirs = factory.write_community_gguf(make_gguf("q8_0"), tmp_path / "c.gguf")
    (tmp_path / "taken.gguf").write_bytes(b"keep me")
    result = runner.invoke(app, ["repair", str(theirs), "-o", str(tmp_path / "taken.gguf")])
    assert result.exit_code == 1 and "already exists (use --force" in result.stderr
    assert (tmp_path / "taken.gguf").read_bytes() == b"keep me"
    result = runner.invoke(app, ["repair", str(theirs), "-o", str(theirs)])
    assert result.exit_code == 1 and "another file than the input" in result.stderr
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    result = runner.invoke(app, ["repair", str(theirs), "-o", str(tmp_path / "taken.gguf"), "--force",
                                 "--template", str(template)])
    assert result.exit_code == 0 and "chat template replaced" in result.stderr
    assert open_gguf(tmp_path / "taken.gguf").get(K.Tokenizer.CHAT_TEMPLATE) == template.read_text()
    foreign = factory.write_foreign_gguf(tmp_path / "llama.gguf")
    result = runner.invoke(app, ["repair", str(foreign)])
    assert result.exit_code == 1 and "not GLM-4" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gguf", "llama.gguf", "t.jinja", "taken.gguf"]


def test_repair_picks_the_1m_template_by_context(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    theirs = factory.write_community_gguf(make_gguf("f32", shape=factory.Shape(context=1048576)),
                                          tmp_path / "long.gguf")
    report = repair(theirs, tmp_path / "fixed.gguf")
    assert "chat template added (glm-4-9b-chat-1m's)" in report.changes
    template = open_gguf(tmp_path / "fixed.gguf").get(K.Tokenizer.CHAT_TEMPLATE)
    assert template == GLM4_9B.published_templates["glm-4-9b-chat-1m"] and "名为 GLM-4 的" in template


def test_chat_warns_once_about_an_unrepaired_file(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    theirs = factory.write_community_gguf(scripted_gguf("answer"), tmp_path / "c.gguf")
    result = runner.invoke(app, ["chat", str(theirs), "-p", "hi"])
    assert result.exit_code == 0 and result.stdout == "Sunny day\n"
    assert result.stderr.count("run glm4-local repair") == 2  # the pre-tokenizer and the missing stop, once each
    assert result.stderr.count("\n") == 2


@pytest.mark.heavy
def test_repair_of_a_real_vocabulary_community_gguf_is_exact(real_vocab_gguf: Path, tmp_path: Path) -> None:
    """The GLM-4-9B-Chat GGUFs on the Hub, tokenizer-wise: over a thousand strings differ; after repair none."""
    from helpers.tokenizers import corpus_mismatches, corpus_variants, reference_encoder, vocabulary_mismatches

    from glm4_local.convert.tiktoken_ranks import load_ranks

    encoder = reference_encoder(factory.REAL_TOKENIZER)
    ranks = load_ranks(factory.REAL_TOKENIZER)

    def wrong(path: Path) -> list[str]:
        llm = door.load(path, vocab_only=True)
        return [t for _, t in vocabulary_mismatches(llm, encoder, ranks)] + corpus_mismatches(
            llm, encoder, corpus_variants())

    theirs = factory.write_community_gguf(real_vocab_gguf, tmp_path / "hub.gguf")
    broken = wrong(theirs)
    assert len(broken) > 1000 and "选择" in broken
    report = repair(theirs, tmp_path / "fixed.gguf")
    assert report.check is not None and report.check.exact and report.check.checked > 150_000
    assert wrong(tmp_path / "fixed.gguf") == []
    assert tensor_bytes(tmp_path / "fixed.gguf") == tensor_bytes(real_vocab_gguf)


def test_repair_of_a_byte_flipped_vocabulary_is_one_line_and_writes_nothing(make_gguf: Callable[..., Path],
                                                                             tmp_path: Path) -> None:
    """A flipped byte in a token string used to make tiktoken panic inside the check: a traceback, and
    the repaired file already published."""
    from helpers import craft

    theirs = factory.write_community_gguf(make_gguf("q8_0"), tmp_path / "community.gguf")
    tokens = list(open_gguf(theirs).get(K.Tokenizer.LIST))
    tokens[tokens.index("a")] = "\u0101"  # the single-byte token for "a" no longer reads as that byte
    flipped = craft.craft(theirs, tmp_path / "flipped.gguf",
                          {K.Tokenizer.LIST: (gguf.GGUFValueType.ARRAY, tokens, gguf.GGUFValueType.STRING)})
    result = runner.invoke(app, ["repair", str(flipped)])
    assert result.exit_code == 1 and "single-byte tokens" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["community.gguf", "flipped.gguf"]


@pytest.mark.processes
def test_repair_removes_temporaries_of_killed_runs(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    theirs = factory.write_community_gguf(make_gguf("q8_0"), tmp_path / "community.gguf")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f".community-repaired.gguf.glm4-local-{dead}-abc123.tmp"
    stale.write_bytes(b"half a file")
    result = runner.invoke(app, ["repair", str(theirs)])
    assert result.exit_code == 0, result.stderr
    assert not stale.exists() and f"removed {stale}" in result.stderr


@pytest.mark.parametrize("outtype", ["q8_0", "f32"])
def test_repair_in_place_gives_the_very_file_a_copy_gives(make_gguf: Callable[..., Path], tmp_path: Path,
                                                          outtype: str) -> None:
    """A pull repairs its own download in place (no second copy on disk): the bytes are the copy's."""
    from glm4_local.gguf_tools.repair import repair_in_place

    theirs = factory.write_community_gguf(make_gguf(outtype), tmp_path / "community.gguf")
    copied = repair(theirs, tmp_path / "copied.gguf")
    report = repair_in_place(theirs)
    assert report is not None and report.output == theirs and report.changes == copied.changes
    assert report.check is not None and report.check.exact
    assert theirs.read_bytes() == (tmp_path / "copied.gguf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["community.gguf", "copied.gguf"]  # no scratch left
    again = repair_in_place(theirs)
    assert again is not None and again.output is None and again.changes == []


def test_a_header_that_shrinks_moves_the_data_down(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    from glm4_local.gguf_tools.rewrite import Field, fields_of, rewrite_gguf, rewrite_in_place

    source = make_gguf("q8_0")
    header = open_gguf(source)
    fields = fields_of(header)
    fields[K.Tokenizer.MERGES] = Field(fields[K.Tokenizer.MERGES].value[:10], gguf.GGUFValueType.ARRAY,
                                       gguf.GGUFValueType.STRING)
    rewrite_gguf(source, header, tmp_path / "copy.gguf", fields)
    moved = tmp_path / "moved.gguf"
    moved.write_bytes(source.read_bytes())
    assert rewrite_in_place(moved, open_gguf(moved), fields, tmp_path / "scratch")
    assert moved.read_bytes() == (tmp_path / "copy.gguf").read_bytes()
    assert moved.stat().st_size < source.stat().st_size


def test_a_layout_a_copy_would_change_is_left_for_the_copy(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    from glm4_local.gguf_tools.rewrite import fields_of, rewrite_in_place

    source = tmp_path / "odd.gguf"
    source.write_bytes(make_gguf("f32").read_bytes())
    header = open_gguf(source)
    header.tensors.reverse()  # the table's order no longer the data's
    before = source.read_bytes()
    assert not rewrite_in_place(source, header, fields_of(header), tmp_path / "scratch")
    assert source.read_bytes() == before

"""GGUF headers from elsewhere: what would abort llama.cpp refused in one line, metadata of the wrong type
or shape one line or a warning, a given template checked as the chat checks it, eval bounded by the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from helpers import craft, factory
from helpers.cli import cli, one_line_error
from helpers.marks import cases

pytestmark = pytest.mark.processes  # the CLI as a child, so an abort in llama.cpp fails a test, not pytest

K, V = gguf.Keys, gguf.GGUFValueType
ARCH = "chatglm"


# -- headers llama.cpp would abort on ---------------------------------------------------------------

ABORTING = {
    "block_count 0": {f"{ARCH}.block_count": (V.UINT32, 0)},
    "block_count 1000": {f"{ARCH}.block_count": (V.UINT32, 1000)},
    "block_count 2^32-1": {f"{ARCH}.block_count": (V.UINT32, 2**32 - 1)},
    "negative eps": {f"{ARCH}.attention.layer_norm_rms_epsilon": (V.FLOAT32, -1e-5)},
    "rope dims past the head": {f"{ARCH}.rope.dimension_count": (V.UINT32, 4096)},
    "llama tokenizer": {K.Tokenizer.MODEL: (V.STRING, "llama")},
    "eos out of range": {K.Tokenizer.EOS_ID: (V.UINT32, 10**6)},
    "garbage merges": {K.Tokenizer.MERGES: (V.ARRAY, ["nospace", "x"], V.STRING)},
}


@pytest.mark.parametrize("case", cases(ABORTING, {"block_count 2^32-1", "rope dims past the head",
                                                  "llama tokenizer", "garbage merges"}))
def test_headers_llama_cpp_would_abort_on_are_refused(scripted_gguf: Callable[[str], Path], tmp_path: Path,
                                                        case: str) -> None:
    path = craft.craft(scripted_gguf("answer"), tmp_path / "bad.gguf", ABORTING[case])
    one_line_error(cli("chat", str(path), "-p", "hi"), "bad.gguf")


# -- metadata of the wrong type or shape ------------------------------------------------------------

BAD_METADATA = {
    "alignment 0": {K.General.ALIGNMENT: (V.UINT32, 0)},
    "alignment array": {K.General.ALIGNMENT: (V.ARRAY, [32, 32], V.UINT32)},
    "2000-deep arrays": {"x.deep": (V.ARRAY, craft.deep_array(2000), V.ARRAY)},
    "file_type 9999": {K.General.FILE_TYPE: (V.UINT32, 9999)},
    "file_type text": {K.General.FILE_TYPE: (V.STRING, "q4")},
    "tokens of numbers": {K.Tokenizer.LIST: (V.ARRAY, [1, 2, 3], V.INT32)},
    "types too short": {K.Tokenizer.TOKEN_TYPE: (V.ARRAY, [1, 1], V.INT32)},
    "merges of numbers": {K.Tokenizer.MERGES: (V.ARRAY, [1, 2], V.INT32)},
    "context text": {f"{ARCH}.context_length": (V.STRING, "4096")},
    "context array": {f"{ARCH}.context_length": (V.ARRAY, [4096], V.UINT32)},
    "context NaN": {f"{ARCH}.context_length": (V.FLOAT32, float("nan"))},
    "context 2^32-1": {f"{ARCH}.context_length": (V.UINT32, 2**32 - 1)},
    "temperature text": {K.General.SAMPLING_TEMP: (V.STRING, "hot")},
    "template number": {K.Tokenizer.CHAT_TEMPLATE: (V.UINT32, 7)},
}


HARMLESS = {"file_type 9999"}  # llama.cpp does not read it: the file still runs, and `info` says "unknown"


@pytest.mark.parametrize("case", cases(BAD_METADATA, {"alignment 0", "2000-deep arrays", "file_type 9999",
                                                     "types too short", "context NaN"}))
def test_bad_metadata_is_one_line_or_a_warning(scripted_gguf: Callable[[str], Path], tmp_path: Path,
                                                 case: str) -> None:
    path = craft.craft(scripted_gguf("answer"), tmp_path / "m.gguf", BAD_METADATA[case])
    chat = cli("chat", str(path), "-p", "hi")
    if case in HARMLESS:
        assert chat.returncode == 0 and chat.stdout == "Sunny day\n", chat.stderr
        assert "file type: unknown (9999)" in cli("info", str(path)).stdout
        return
    one_line_error(chat, "m.gguf")
    info = cli("info", str(path))
    assert info.returncode in (0, 1) and "Traceback" not in info.stderr, info.stderr
    if info.returncode == 0:
        assert "llama.cpp cannot load it" in info.stderr


@pytest.mark.parametrize(("template", "problem"), [
    ("{{ 9 ** 999999999 }}", "ran for more than"),
    ("{% for m in messages %}" + "x" * 300_000 + "{% endfor %}", "is refused"),
    ("{{ undefined_function() }}", "template.jinja"),
], ids=["hangs", "huge", "fails"])
def test_repair_checks_a_given_template_as_chat_does(make_gguf: Callable[..., Path], tmp_path: Path,
                                                     template: str, problem: str) -> None:
    theirs = factory.write_community_gguf(make_gguf("q8_0"), tmp_path / "community.gguf")
    (tmp_path / "template.jinja").write_text(template)
    one_line_error(cli("repair", str(theirs), "--template", str(tmp_path / "template.jinja")), problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["community.gguf", "template.jinja"]


def test_eval_ctx_is_bounded_by_the_trained_context(make_gguf: Callable[..., Path]) -> None:
    model = make_gguf("f32")
    one_line_error(cli("eval", str(model), "--reference", str(model), "--ctx", "2000000"),
                   "2,000,000 tokens is more than the")


# -- long string arrays (a vocabulary, merges): walked at start, decoded when read ------------------

def test_long_string_arrays_read_as_the_lists_they_hold(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    from glm4_local.core.gguf.header import LAZY_MIN, StringArray, read_gguf_header

    kinds = ["a b", "é x", "中 文", "x y z", "", " ", "  ", " x", "x ", "é ", "\udcff b", "a\udcff", "ab",
             "\U0001f600 \U0001f600"]
    items = [f"{kinds[i % len(kinds)]}" for i in range(LAZY_MIN + 7)]
    pairs = [f"{i} {i}" for i in range(LAZY_MIN)]
    path = craft.craft(scripted_gguf("answer"), tmp_path / "m.gguf", {
        "x.items": (V.ARRAY, items, V.STRING), "x.pairs": (V.ARRAY, pairs, V.STRING),
        "x.last_bad": (V.ARRAY, [*pairs, "nospace"], V.STRING), "x.first_bad": (V.ARRAY, ["x ", *pairs], V.STRING)})
    header = read_gguf_header(path)
    expected = [s.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for s in items]
    walked = header.strings("x.items")
    assert isinstance(walked, StringArray) and len(walked) == len(items)
    assert [walked[i] for i in (0, 5, 10, 11, -1)] == [expected[i] for i in (0, 5, 10, 11, -1)]
    assert header.get("x.items") == expected and walked == expected and walked[2:4] == expected[2:4]
    for key, inside in (("x.items", False), ("x.pairs", True), ("x.last_bad", False), ("x.first_bad", False)):
        array = header.strings(key)
        assert isinstance(array, StringArray)
        assert array.each_has_inside(b" ") is inside == all(" " in s[1:-1] for s in header.get(key))
    assert [s for s in expected if " " in s[1:-1]] == [s for i, s in enumerate(expected)
                                                       if StringArray.each_has_inside(_one(walked, i), b" ")]


def _one(array: object, index: int) -> object:
    """The item at `index` of a StringArray as a StringArray of one."""
    from glm4_local.core.gguf.header import StringArray

    assert isinstance(array, StringArray)
    start, length = array._starts[index : index + 1], array._lengths[index : index + 1]
    return StringArray(array._region, start, length)


def test_one_merge_without_its_space_in_a_long_list_is_refused(scripted_gguf: Callable[[str], Path],
                                                              tmp_path: Path) -> None:
    from glm4_local.core.gguf.header import LAZY_MIN, read_gguf_header

    source = scripted_gguf("answer")
    merges = read_gguf_header(source).get(K.Tokenizer.MERGES)
    long = [*merges, *(f"{i} {i}" for i in range(LAZY_MIN)), "nospace"]  # as long as a real list: the walked path
    path = craft.craft(source, tmp_path / "bad.gguf", {K.Tokenizer.MERGES: (V.ARRAY, long, V.STRING)})
    one_line_error(cli("chat", str(path), "-p", "hi"), "bad.gguf")

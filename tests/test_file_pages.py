"""A mapped model's page cache settled in 2 MiB folios before llama.cpp maps it (core/llama/file_pages.py)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import factory
from helpers.cli import invoke
from helpers.pages import small_folio_copy
from helpers.serving import Server

from glm4_local.core.llama import file_pages, huge_pages


def mapped_in_huge_pages(folder: Path) -> bool:
    """Whether this kernel maps a file of `folder`'s filesystem in 2 MiB pages at all: 8 MiB written in one
    piece (large folios where the filesystem has them), mapped and read (found apart from file_pages)."""
    probe = folder / "probe"
    probe.write_bytes(bytes(8 << 20))
    with open(probe, "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as view:
        before = huge_pages.huge_page_bytes(kind="FilePmdMapped")
        view.madvise(mmap.MADV_HUGEPAGE)
        sum(view[i] for i in range(0, len(view), 4096))
        return huge_pages.huge_page_bytes(kind="FilePmdMapped") > before


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, make_gguf: Callable[..., Path]) -> Path:
    """A 31 MiB f32 model; skipped where this filesystem's files are never mapped in 2 MiB pages."""
    if not mapped_in_huge_pages(tmp_path_factory.mktemp("probe")):
        pytest.skip("this kernel maps no file of the temporary folder's filesystem in 2 MiB pages (tmpfs, or no "
                    "large folios)")
    model = make_gguf("f32", dtype="f32", shape=factory.Shape(n_embd=512, n_head=8, n_head_kv=2, head_dim=64,
                                                                n_ff=2048))
    assert model.stat().st_size > 16 << 20
    return model


def test_settle_reads_small_folios_again_once(weights: Path, tmp_path: Path) -> None:
    copy = small_folio_copy(weights, tmp_path / "copy.gguf")
    checked = file_pages.settle(copy, mend=False)
    assert checked.span == weights.stat().st_size // (2 << 20) * (2 << 20)
    assert checked.huge_before < checked.span // 2 and checked.reread == 0 and checked.why_not == "only checked"
    mended = file_pages.settle(copy)
    assert mended.why_not == "" and mended.reread > 0
    assert mended.huge_after >= mended.span * 9 // 10 > mended.huge_before
    again = file_pages.settle(copy)
    assert (again.reread, again.why_not) == (0, "held in 2 MiB folios already")
    assert copy.read_bytes() == weights.read_bytes()


def test_settle_leaves_what_it_cannot_use(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(b"GGUF" + bytes(4096))
    small = file_pages.settle(tiny)
    assert (small.span, small.reread, small.why_not) == (0, 0, "smaller than a 2 MiB page")
    missing = file_pages.settle(tmp_path / "missing.gguf")
    assert missing.span == 0 and missing.why_not.startswith("FileNotFoundError")
    os.mkfifo(tmp_path / "fifo.gguf")  # opened without a writer, it would hang a load
    assert file_pages.settle(tmp_path / "fifo.gguf").why_not == "not a regular file"
    assert file_pages.settle(tmp_path).why_not == "not a regular file"
    larger = tmp_path / "larger.gguf"
    larger.write_bytes(bytes(4 << 20))
    assert file_pages.settle(larger, room=2 << 20) == file_pages.Settled(why_not="larger than the memory available")
    assert file_pages.settle(larger, room=8 << 20).span == 4 << 20


def test_serve_maps_a_small_folio_copy_in_huge_pages(weights: Path, tmp_path: Path) -> None:
    """A model the cache held in 4 KiB folios is mapped by a real `serve` in 2 MiB pages."""
    copy = small_folio_copy(weights, tmp_path / "served.gguf")
    assert file_pages.settle(copy, mend=False).huge_before < copy.stat().st_size // 2
    server = Server(copy, tmp_path, "--ctx", "256")
    try:
        mapped = huge_pages.huge_page_bytes(server.process.pid, "FilePmdMapped")
    finally:
        server.stop()
    assert mapped >= copy.stat().st_size // 2


def test_doctor_says_whether_models_in_the_store_lie_in_2_mib_pages(tmp_path: Path) -> None:
    """The probe file doctor writes in the store (here: the nearest folder above the store, which does not exist
    yet) tells what the independent probe tells, and leaves no trace; a path that is not a folder cannot be
    probed, and says why."""
    (tmp_path / "probe").mkdir()
    expected = mapped_in_huge_pages(tmp_path / "probe")
    assert file_pages.folder_keeps_huge_folios(tmp_path)[0] is expected
    before = sorted(tmp_path.iterdir())
    shown = invoke(["doctor"]).stdout  # the store is under this test's own GLM4_LOCAL_HOME, in tmp_path
    assert f"Model file pages  {'2 MiB' if expected else '4 KiB'}: files in {tmp_path}" in shown
    assert sorted(tmp_path.iterdir()) == before
    assert file_pages.folder_keeps_huge_folios(tmp_path / "probe" / "probe") == (None, "NotADirectoryError: "
                                                                                  "Not a directory")

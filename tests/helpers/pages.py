"""A model file as the page cache holds it: written in 4 KiB pieces (small folios), for core/llama/file_pages.py's
tests and benchmarks/file_pages.py."""

from __future__ import annotations

import os
from pathlib import Path

SMALL_WRITE = 4096


def small_folio_copy(source: Path, target: Path) -> Path:
    """`source` written to `target` SMALL_WRITE bytes at a time, as a copy or a download may: the cache then holds
    it in 4 KiB folios (on disk too, so that the cache may drop it)."""
    with open(source, "rb") as given, open(target, "wb") as out:
        while chunk := given.read(SMALL_WRITE):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return target

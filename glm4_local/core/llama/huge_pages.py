"""Model weights read into 2 MiB pages (Linux transparent huge pages): a decode step on the CPU streams every
weight once, and from 2 MiB pages instead of 4 KiB ones it runs faster (README, "Weights in huge pages").

A mapped model file lies in 2 MiB pages where its filesystem keeps it in 2 MiB page-cache folios, which loading
sees to (core/llama/file_pages.py). Where it does not (tmpfs, older kernels, filesystems without large folios),
`--huge-pages` reads the weights into memory, and asks for huge pages on llama.cpp's freshly allocated weight
buffers before any weight is written into them: llama.cpp's load progress is first reported after the buffers
are allocated and before the first tensor is read (llama_model_loader::load_all_data), which is where
WeightBuffers.advise runs.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # <linux/mman.h>
PR_GET_THP_DISABLE = 42  # <linux/prctl.h>: a container or parent may have turned them off for this process


def thp_mode(line: str | None = None) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"; "disabled" where this process may
    not have them), None where it has none."""
    if line is None:
        try:
            line = THP_MODE.read_text()
        except OSError:
            return None
    chosen = re.search(r"\[(\w+)\]", line)
    if chosen is None:
        return None
    return "disabled" if _disabled_for_this_process() else chosen.group(1)


def _disabled_for_this_process() -> bool:
    try:
        return bool(ctypes.CDLL(None).prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1)
    except (OSError, AttributeError):
        return False


def available(mode: str | None) -> bool:
    return mode in ("always", "madvise")


def advice(mode: str | None) -> str:
    """doctor's line: whether `--huge-pages` can put the weights in 2 MiB pages here."""
    if mode is None:
        return "none here (no transparent huge pages)"
    if mode == "disabled":
        return "off for this process (its transparent huge pages were turned off, e.g. by its container)"
    if not available(mode):
        return f"off in the kernel (transparent huge pages: {mode})"
    return ("--huge-pages reads the weights into 2 MiB pages, for a filesystem that keeps a mapped model in 4 KiB "
            "ones (elsewhere loading settles the mapped file in 2 MiB pages; the kernel cannot drop read weights "
            "under memory pressure, as it can a mapped file's pages)")


def memory_calls() -> ctypes.CDLL:
    """The C library, with mmap, madvise and munmap typed (addresses and sizes as pointers and size_t)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _anonymous_regions() -> set[tuple[int, int]]:
    """(start, end) of this process's private writable mappings backed by no file (none where /proc has no maps)."""
    regions: set[tuple[int, int]] = set()
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return regions
    for line in lines:
        fields = line.split()
        if len(fields) == 5 and fields[1].startswith("rw"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.add((start, end))
    return regions


class WeightBuffers:
    """The anonymous mappings that appear between its creation and advise(): llama.cpp's weight buffers when
    created just before a load; advise() asks for huge pages on each (whole 2 MiB pages of it) once."""

    def __init__(self) -> None:
        self.before = _anonymous_regions()
        self.advised = 0  # bytes
        self.done = False

    def advise(self) -> int:
        """Bytes advised. Never raises: it runs inside llama.cpp's load, where an exception would abort it."""
        if self.done:
            return self.advised
        self.done = True
        try:
            libc = memory_calls()
        except OSError:
            return 0
        for start, end in sorted(_anonymous_regions() - self.before):
            first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
            if last - first >= HUGE_PAGE and libc.madvise(first, last - first, MADV_HUGEPAGE) == 0:
                self.advised += last - first
        return self.advised


def huge_page_bytes(pid: int | None = None, kind: str = "AnonHugePages") -> int:
    """A process's memory in transparent huge pages (this one's by default): "AnonHugePages", its own memory, or
    "FilePmdMapped", files it maps; 0 where the kernel does not say."""
    try:
        text = Path(f"/proc/{pid or os.getpid()}/smaps_rollup").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{kind}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0

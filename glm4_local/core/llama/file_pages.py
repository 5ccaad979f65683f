"""A mapped model file's weights in 2 MiB pages (Linux): the kernel maps a file's page cache in 2 MiB pages where
it holds the file in 2 MiB folios, and a decode step on the CPU, which streams every weight once, then runs
faster (llama.cpp's own llama-bench, one file in both states: benchmarks/file_pages.py).

Which folios the cache holds depends on how the file got there. Read by a mapping that asked for huge pages, or
written 2 MiB at a time, it is held in 2 MiB folios (on a filesystem with large folios, e.g. ext4 or xfs on a
recent kernel). Written in small pieces (a copy, a download, many converters), it is held in 4 KiB ones, and
stays so for as long as it is cached: the kernel does not merge them (MADV_COLLAPSE on a file needs a kernel built
for it). So before llama.cpp maps the model, settle() maps it a piece at a time with MADV_HUGEPAGE and, where a
piece is not held in 2 MiB folios, drops that piece from the cache and reads it again into them. That re-read
happens once (later starts find the cache settled), and only where 2 MiB dropped and read first came back in a
2 MiB folio (elsewhere, as on tmpfs or a filesystem without large folios, each start reads just those 2 MiB).
Pages another process maps, or not yet written to disk, are not dropped; they stay as they are.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from glm4_local.core.llama.huge_pages import HUGE_PAGE, MADV_HUGEPAGE, memory_calls

PIECE = 128 * HUGE_PAGE  # mapped, measured and mended one at a time (measured alone: one mapping, no merging)
PROT_READ, MAP_SHARED = 1, 1  # <sys/mman.h>
MADV_DONTNEED, MADV_POPULATE_READ = 4, 22
_FAILED = ctypes.c_void_p(-1).value


@dataclass(frozen=True)
class Settled:
    """What settle() found and did, in bytes of the file's whole 2 MiB pages."""

    span: int = 0  # the file's bytes in whole 2 MiB pages
    huge_before: int = 0  # of them held in 2 MiB folios before
    huge_after: int = 0  # ... and after
    reread: int = 0  # dropped from the cache and read again
    seconds: float = 0.0
    why_not: str = ""  # why it did nothing, where it did nothing


def settle(path: Path, mend: bool = True, room: int | None = None) -> Settled:
    """Make the page cache hold `path` in 2 MiB folios where this kernel and filesystem can (see the module);
    `mend=False`: only say how much it holds so; `room`: the memory available, where known (a larger file is left
    alone: the cache cannot hold it whole, and reading it here would only read it twice). Never raises: a model
    loads the same without it."""
    if sys.platform != "linux":
        return Settled(why_not="not Linux")
    started = time.monotonic()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO named as a model must not hang the load
    except OSError as e:
        return Settled(why_not=f"{type(e).__name__}: {e}")
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            return Settled(why_not="not a regular file")
        if room is not None and found.st_size > room:
            return Settled(why_not="larger than the memory available")
        settled = _settle_file(memory_calls(), fd, found.st_size, mend)
    except OSError as e:
        return Settled(why_not=f"{type(e).__name__}: {e}")
    finally:
        os.close(fd)
    return replace(settled, seconds=time.monotonic() - started)


def folder_keeps_huge_folios(folder: Path) -> tuple[bool | None, str]:
    """Whether a file in `folder` is read into 2 MiB page-cache folios, i.e. whether a model kept there can be settled
    in 2 MiB pages (for doctor): 2 MiB written to an unnamed file there, synced, dropped from the cache and read
    through a mapping that asks for huge pages. `why` completes "files there are ..."; (None, why) where it cannot
    be told. Never raises."""
    if sys.platform != "linux":
        return None, "not Linux"
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:  # unnamed where the filesystem can (O_TMPFILE): no trace
            probe.write(bytes(HUGE_PAGE))
            probe.flush()
            os.fsync(probe.fileno())  # written pages are dropped from the cache only once on disk
            with _Piece(memory_calls(), probe.fileno(), 0, HUGE_PAGE) as piece:
                if piece.address % HUGE_PAGE:
                    return False, "mapped at addresses not aligned to 2 MiB (as tmpfs maps files)"
                if piece.rereading_helps(probe.fileno()):
                    return True, "read into 2 MiB folios"
                return False, "read into small folios (tmpfs, a filesystem without large folios, or huge pages off)"
    except OSError as e:
        return None, f"{type(e).__name__}: {e.strerror or e}"


def _settle_file(libc: ctypes.CDLL, fd: int, size: int, mend: bool) -> Settled:
    span = size // HUGE_PAGE * HUGE_PAGE
    if span == 0:
        return Settled(why_not="smaller than a 2 MiB page")
    before = after = reread = 0
    helps: bool | None = None if mend else False  # unknown until a piece not all in 2 MiB folios is tried
    for offset in range(0, span, PIECE):
        length = min(PIECE, span - offset)
        with _Piece(libc, fd, offset, length) as piece:
            if piece.address % HUGE_PAGE:
                return Settled(span, why_not="the kernel does not align this file's mappings to 2 MiB")
            huge = piece.huge_bytes()
            before += huge
            if huge < length and helps is None:
                helps = piece.rereading_helps(fd)
            if huge < length and helps:
                huge = piece.read_again(fd)
                reread += length
            after += huge
    if before == span:
        return Settled(span, before, after, why_not="held in 2 MiB folios already")
    if not mend:
        return Settled(span, before, after, why_not="only checked")
    if not helps:
        return Settled(span, before, after, reread, why_not="this filesystem or kernel keeps the file in small folios")
    return Settled(span, before, after, reread)


class _Piece:
    """One mapping of [offset, offset + length) of the file, asking for huge pages, with every page touched."""

    def __init__(self, libc: ctypes.CDLL, fd: int, offset: int, length: int) -> None:
        self.libc, self.offset, self.length = libc, offset, length
        address = libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, offset)
        if address in (None, _FAILED):
            raise OSError(ctypes.get_errno(), "mmap of the model file failed")
        self.address = int(address)
        libc.madvise(self.address, length, MADV_HUGEPAGE)
        self._touch()

    def __enter__(self) -> _Piece:
        return self

    def __exit__(self, *_: object) -> None:
        self.libc.munmap(self.address, self.length)

    def _touch(self) -> None:
        """Fault in every page: a cached one is mapped as the cache holds it, an uncached one is read (with the
        mapping's huge page advice, into a 2 MiB folio). One madvise, which reads without Python's lock (serve
        loads while its modules import); where the kernel has no MADV_POPULATE_READ (before 5.14), a byte a page."""
        if self.libc.madvise(self.address, self.length, MADV_POPULATE_READ) == 0:
            return
        for page in range(self.address, self.address + self.length, HUGE_PAGE):
            ctypes.string_at(page, 1)

    def huge_bytes(self) -> int:
        """Bytes of this mapping mapped in 2 MiB pages (FilePmdMapped in its /proc/self/smaps entry)."""
        return _file_pmd_mapped(self.address)

    def rereading_helps(self, fd: int) -> bool:
        """Whether this kernel and filesystem read a dropped page back into a 2 MiB folio: tried on the piece's
        first 2 MiB, so that where they do not, only that is read again."""
        self.libc.madvise(self.address, HUGE_PAGE, MADV_DONTNEED)
        os.posix_fadvise(fd, self.offset, HUGE_PAGE, os.POSIX_FADV_DONTNEED)
        with _Piece(self.libc, fd, self.offset, HUGE_PAGE) as probe:
            return probe.address % HUGE_PAGE == 0 and probe.huge_bytes() == HUGE_PAGE

    def read_again(self, fd: int) -> int:
        """Drop the piece from the page cache (unmapped here first, or the kernel keeps it) and read it again;
        bytes then in 2 MiB pages."""
        self.libc.madvise(self.address, self.length, MADV_DONTNEED)
        os.posix_fadvise(fd, self.offset, self.length, os.POSIX_FADV_DONTNEED)
        self._touch()
        return self.huge_bytes()


def _file_pmd_mapped(address: int) -> int:
    """FilePmdMapped of the mapping starting at `address`, in bytes (its /proc/self/smaps entry; 0 where none)."""
    found = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if not head[0].endswith(":"):  # a mapping's first line: "start-end perms offset dev inode path"
                if found:
                    return 0
                found = int(head[0].split("-")[0], 16) == address
            elif found and head[0] == "FilePmdMapped:":
                return int(head[1]) * 1024
    return 0

"""How much a conversation's data folder (/mnt/data) holds: disk blocks and entries, walked without
following links, and never further than one entry past the limit (a folder of millions of files costs
no more to measure than one just over the limit)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    bytes: int  # disk space the files take (a sparse file counts what it holds, not its length)
    files: int  # files, folders and anything else, counted up to one past the limit


def usage(folder: Path, max_entries: int) -> Usage:
    total, entries = 0, 0
    pending = [str(folder)]
    while pending and entries <= max_entries:
        try:
            scan = os.scandir(pending.pop())
        except OSError:
            continue
        with scan:
            for entry in scan:
                entries += 1
                if entries > max_entries:
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += info.st_blocks * 512 if hasattr(info, "st_blocks") else info.st_size
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
    return Usage(total, entries)

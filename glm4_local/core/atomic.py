"""Write a file so that it either appears complete or not at all."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glm4_local.core.errors import OutputError, OutputExistsError


def check_writable_target(path: Path, force: bool) -> None:
    """Fail early (before hours of work) when `path` cannot be created."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: already exists")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable")


def temp_path_beside(path: Path, tag: str = "tmp") -> Path:
    """A fresh, empty temporary file in `path`'s folder (same filesystem, so rename is atomic)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{tag}", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path.parent}: cannot create a file here ({e.strerror})") from e
    os.close(fd)
    return Path(name)


def output_error(path: Path, error: OSError) -> OutputError:
    if error.errno == errno.ENOSPC:
        return OutputError(f"{path}: disk full while writing; nothing was left behind")
    return OutputError(f"{path}: write failed ({error.strerror or error})")


@contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `path` only if the block completes.

    Any exception, Ctrl-C included, removes the temporary file, so no half file is ever left.
    """
    check_writable_target(path, force)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)

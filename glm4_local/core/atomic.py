"""Write a file so that it either appears complete or not at all, and only ever in place of a regular file.

Temporary files are named `.<name>.glm4-local-<pid>-<random>.<tag>` beside the output: the same
filesystem (so publishing is a rename), recognisable, and stale once process <pid> is gone.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glm4_local.core.errors import OutputError, OutputExistsError

TEMP_MARK = "glm4-local"
_TEMP_NAME = re.compile(rf"^\..+\.{TEMP_MARK}-(\d+)-[^.]+\.\w+$")


def _umask() -> int:
    """The process's umask: from /proc where it can be read, else by setting it and back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def refuse_non_regular(path: Path) -> None:
    """OutputError if `path` exists (through symlinks) as anything but a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"{path}: cannot check it ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        raise OutputError(f"{path}: is {_kind(mode)}; glm4-local only ever replaces regular files")


def check_writable_target(path: Path, force: bool) -> None:
    """Fail early (before hours of work) when `path` cannot be created."""
    if os.path.lexists(path):
        refuse_non_regular(path)
        if not force:
            raise OutputExistsError(f"{path}: already exists")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable")


def temp_path_beside(path: Path, tag: str = "tmp") -> Path:
    """A fresh, empty temporary file in `path`'s folder, with the permissions the user's umask gives."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_MARK}-{os.getpid()}-", suffix=f".{tag}",
                                    dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path.parent}: cannot create a file here ({e.strerror})") from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output is a file like any other the user makes
    finally:
        os.close(fd)
    return Path(name)


def publish(tmp: Path, path: Path, force: bool) -> None:
    """Put the finished `tmp` at `path`: over a regular file only with `force`, never over anything else.

    Without `force` the file is linked into place, which fails if `path` appeared meanwhile (another
    conversion to the same name), so a finished file is never silently replaced.
    """
    if force:
        refuse_non_regular(path)
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path}: appeared while this was being written; it was kept") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):  # a filesystem without hard links: check, then rename
            raise OutputExistsError(f"{path}: appeared while this was being written; it was kept") from None
        os.rename(tmp, path)
        return
    tmp.unlink()


def output_error(path: Path, error: OSError) -> OutputError:
    if error.errno == errno.ENOSPC:
        return OutputError(f"{path}: disk full while writing; nothing was left behind")
    return OutputError(f"{path}: write failed ({error.strerror or error})")


@contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; publish it as `path` only if the block completes.

    Any exception, Ctrl-C included, removes the temporary file, so no half file is ever left.
    """
    check_writable_target(path, force)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        publish(tmp, path, force)
    except OSError as e:
        raise output_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (someone else's counts): what tells a killed run's leftovers."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporary files in `folder` whose writing process is gone (killed, out of memory)."""
    removed = []
    try:
        candidates = list(folder.iterdir())
    except OSError:
        return []
    for path in candidates:
        match = _TEMP_NAME.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
    return removed

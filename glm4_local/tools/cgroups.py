"""Bounds on a whole sandbox (all of its processes together, its tmpfs pages included), from the kernel's
control groups wherever this machine lets glm4-local have one:

- cgroup v2, delegated: our own cgroup already hands `memory` and `pids` to its children (a systemd
  user service, a container given its cgroup), so a child cgroup of ours is made for each sandbox;
- a systemd user scope (`systemd-run --user --scope -p MemoryMax= -p TasksMax=`), the usual way on a
  desktop Linux, where the login session's cgroup is systemd's to manage;
- cgroup v1 as root (containers, CI): a child of our own group in the `memory` and `pids` hierarchies.

Where none of them can be had the sandbox falls back to per-process rlimits (sandbox.py), and `doctor`
and the banner say so. Each sandbox gets its own group, named after glm4-local's process, removed when
the sandbox ends; groups left by a glm4-local that was killed are removed by the next one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glm4_local.core.atomic import pid_alive

PREFIX = "glm4-local-"
_numbers = itertools.count(1)


@dataclass(frozen=True)
class Mount:
    point: Path
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # v1: the controllers of this hierarchy


def _mounts(mountinfo: str) -> list[Mount]:
    """The cgroup file systems in /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
            found.append(Mount(Path(fields[4].replace("\\040", " ")), rest[0], frozenset(rest[2].split(","))))
    return found


def _own_groups(proc_cgroup: str) -> dict[str, str]:
    """Our process's group per controller (v1) and under "" (v2), from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                groups[controller] = parts[2]
    return groups


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _remove_stale(parent: Path) -> None:
    """Empty groups of ours whose glm4-local process is gone (it was killed before it could remove them)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            pid = entry.name[len(PREFIX):].split("-")[0] if entry.name.startswith(PREFIX) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)


@dataclass
class Group:
    """One sandbox's cgroups (one per v1 hierarchy, or one v2 group): limits written, joined by the
    sandbox's first process before it starts, emptied and removed at the end."""

    folders: list[Path]
    version: int
    joined: list[Path] = field(default_factory=list)

    def join(self) -> None:
        """Called in the child between fork and exec: it, and all it starts, are in the group."""
        pid = str(os.getpid())
        for folder in self.folders:
            _write(folder / "cgroup.procs", pid)

    def out_of_memory(self) -> bool:
        """Whether the kernel's OOM killer ended a process of this group (the group's memory was spent)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for folder in self.folders:
            with contextlib.suppress(OSError, ValueError):
                for line in (folder / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
        return False

    def close(self) -> None:
        """End every process still in the group, then remove it."""
        for folder in self.folders:
            if (folder / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(folder / "cgroup.kill", "1")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    break
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                os.rmdir(folder)


@dataclass(frozen=True)
class Cgroups:
    """How this machine bounds a sandbox: `kind` says it in words; `make` gives one sandbox its group,
    or (systemd) `scope` gives the words to put before its command."""

    kind: str  # "cgroup v2", "systemd user scope", "cgroup v1"
    parents: tuple[Path, ...] = ()  # where each sandbox's group is made (v1: memory, then pids)
    version: int = 0

    def make(self, memory_bytes: int, processes: int) -> Group | None:
        if not self.parents:
            return None
        name = f"{PREFIX}{os.getpid()}-{next(_numbers)}"
        folders: list[Path] = []
        try:
            for parent in self.parents:
                _remove_stale(parent)
                folder = parent / name
                folder.mkdir()
                folders.append(folder)
                _limit(folder, self.version, memory_bytes, processes)
        except OSError:
            for folder in folders:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise
        return Group(folders, self.version)

    def scope(self, memory_bytes: int, processes: int) -> list[str]:
        if self.kind != SYSTEMD:
            return []
        return [shutil.which("systemd-run") or "systemd-run", "--user", "--scope", "--quiet", "--collect",
                "-p", f"MemoryMax={memory_bytes}", "-p", "MemorySwapMax=0", "-p", f"TasksMax={processes}", "--"]


SYSTEMD = "systemd user scope"


def _limit(folder: Path, version: int, memory_bytes: int, processes: int) -> None:
    """Write the limits the folder's controllers have (a v1 folder has one of them)."""
    if version == 2:
        _write(folder / "memory.max", str(memory_bytes))
        with contextlib.suppress(OSError):  # no swap accounting: nothing to bound
            _write(folder / "memory.swap.max", "0")
        _write(folder / "pids.max", str(processes))
        return
    if (folder / "memory.limit_in_bytes").exists():
        _write(folder / "memory.limit_in_bytes", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(folder / "memory.memsw.limit_in_bytes", str(memory_bytes))
    if (folder / "pids.max").exists():
        _write(folder / "pids.max", str(processes))


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK) and os.access(folder / "cgroup.procs", os.W_OK)


def _v2(mounts: list[Mount], own: dict[str, str]) -> Cgroups | None:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or "" not in own:
        return None
    folder = mount.point / own[""].lstrip("/")
    try:
        delegated = set((folder / "cgroup.subtree_control").read_text().split())
    except OSError:
        return None
    if {"memory", "pids"} <= delegated and _writable(folder):
        return Cgroups("cgroup v2", (folder,), 2)
    return None


def _v1(mounts: list[Mount], own: dict[str, str]) -> Cgroups | None:
    parents = []
    for controller in ("memory", "pids"):
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if mount is None or controller not in own:
            return None
        folder = mount.point / own[controller].lstrip("/")
        if not _writable(folder):
            return None
        parents.append(folder)
    return Cgroups("cgroup v1", tuple(parents), 1)


def _systemd_scope() -> Cgroups | None:
    program = shutil.which("systemd-run")
    if program is None or not os.environ.get("XDG_RUNTIME_DIR"):
        return None
    probe = Cgroups(SYSTEMD).scope(64 * 2**20, 8)
    try:
        done = subprocess.run([*probe, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Cgroups(SYSTEMD) if done.returncode == 0 else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def find_cgroups(read: Callable[[str], str] = _read, systemd: Callable[[], Cgroups | None] = _systemd_scope
                 ) -> Cgroups | None:
    """The best way this machine offers to bound a whole sandbox, or None (rlimits only)."""
    mounts, own = _mounts(read("/proc/self/mountinfo")), _own_groups(read("/proc/self/cgroup"))
    return _v2(mounts, own) or systemd() or _v1(mounts, own)

"""Ending everything a tool program started, however it tried to stay: its process group, and (on Linux)
daemons that left with `setsid`, which become this process's children once their parent exits because
glm4-local marks itself a child subreaper before running a tool."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (name) "
    return int(fields[1]), int(fields[3])


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process this one can see (Linux; empty elsewhere)."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(entry)) is not None:
                table[int(entry)] = stat
    return table


def children() -> set[int]:
    me = os.getpid()
    return {pid for pid, (parent, _) in processes().items() if parent == me}


def end_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def end_strays(before: set[int], tool: int) -> None:
    """Kill what the tool left behind: its process group, then any new child of ours (a daemon re-parented
    here) with its whole session, and reap them; repeated while killing frees more orphans."""
    end_group(tool)
    for _ in range(8):
        strays = children() - before - {tool}
        if not strays:
            return
        table = processes()
        sessions = {table[p][1] for p in strays if p in table}
        for pid, (_, session) in table.items():
            if session in sessions or pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for pid in strays:
            _reap(pid)


def _reap(pid: int, tries: int = 50) -> None:
    """Collect a killed child's exit status (without blocking for ever on one that would not die)."""
    for _ in range(tries):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)

"""Children that outlive the thread that asked for them.

The sandbox starts its child with `--die-with-parent` (PR_SET_PDEATHSIG), so that nothing the model
runs outlives glm4-local, even one killed with SIGKILL. Linux sends that signal when the *thread* that
forked the child ends, not the process: the server runs tool calls on worker threads that end after
10 s idle, and a conversation's kernel, with its variables, went with them. So every long-lived child
is forked by one thread that lives as long as the process.

Forking there also keeps Ctrl-C out of the fork: Python raises KeyboardInterrupt only in the main
thread, and one raised inside an at-fork hook (logging's lock) is printed and dropped.
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
from collections.abc import Callable
from typing import Any

_FORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="glm4-local-forker")


def _unblocked(setup: Callable[[], None] | None) -> Callable[[], None]:
    def run() -> None:
        if hasattr(signal, "pthread_sigmask"):  # the forker's mask is its creator's; a kernel is interrupted by SIGINT
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if setup is not None:
            setup()
    return run


def spawn(argv: list[str], preexec: Callable[[], None] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen(argv, preexec_fn=preexec, **popen), forked by the forker thread. A Ctrl-C that
    arrives meanwhile is raised once the child exists and is handed back (so the caller can end it)."""
    future = _FORKER.submit(subprocess.Popen, argv, preexec_fn=_unblocked(preexec), **popen)
    interrupted = False
    while True:
        try:
            process = future.result()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise SpawnInterrupted(process)
    return process


class SpawnInterrupted(KeyboardInterrupt):
    """Ctrl-C while a child was being started: the child, to be ended by whoever caught this."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        super().__init__()
        self.process = process

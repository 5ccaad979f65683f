"""Child processes the tests start: with the signal dispositions a terminal gives, and ended however the
test ends.

A test started from a background job or `nohup` inherits SIGINT and SIGQUIT ignored, and so would its
children: a test that sends Ctrl-C must undo that for the child it sends it to.
"""

from __future__ import annotations

import signal
from typing import Any


def default_signals() -> None:
    """preexec_fn for a child that is sent Ctrl-C or a hang-up: the dispositions a terminal's foreground
    job has (under `nohup` the tests' own SIGHUP arrives ignored)."""
    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


STARTED: list[Any] = []  # children to end after each test (subprocess.Popen or pexpect.spawn)


def started(child: Any) -> Any:
    STARTED.append(child)
    return child


def end_all() -> None:
    while STARTED:
        child = STARTED.pop()
        try:
            if hasattr(child, "terminate") and hasattr(child, "isalive"):  # pexpect
                if child.isalive():
                    child.terminate(force=True)
                child.close(force=True)
            elif child.poll() is None:
                child.kill()
                child.wait()
        except Exception:  # already gone
            continue

"""The CLI run as a user runs it: in the test's own process (Typer's runner, `invoke`) or as a child (`cli`,
where an abort in llama.cpp must fail the test, not pytest); and what a failure must look like: one line
on stderr, no traceback."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from typer.testing import CliRunner

from glm4_local.cli import app

runner = CliRunner()


def invoke(args: list[str], stdin: str | None = None):
    return runner.invoke(app, args, input=stdin)


def cli(*args: str, timeout: float = 90, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glm4_local", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def one_line_error(result: Any, *parts: str) -> None:
    """A failure (Typer's result, or a child's: exit status 1) said in one line naming each of `parts`."""
    if isinstance(result, subprocess.CompletedProcess):
        assert result.returncode == 1, (result.returncode, result.stderr)
    else:
        assert result.exit_code != 0
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


# the CLI, with writing slowed down: a test can interrupt a conversion while it writes
SLOW_CONVERT = """
import sys, time
import glm4_local.convert.writer as w
original = w.encode_blocks
def slow(*args):
    for item in original(*args):
        time.sleep(0.2)
        yield item
w.encode_blocks = slow
from glm4_local.cli import app
sys.argv = ["glm4-local", *sys.argv[1:]]
app()
"""

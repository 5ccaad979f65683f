"""Running the user's tool program (`--tool-exec`) for a function call, bounded in time and output."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.replies import ToolCall
from glm4_local.tools.reaping import become_subreaper, children, end_strays

DEFAULT_TOOL_TIMEOUT = 60.0
MAX_TOOL_OUTPUT = 1024 * 1024  # bytes of a tool's output given to the model; the rest is cut, with a note


def resolve_tool_executable(path: Path) -> Path:
    """The exact file `--tool-exec` names (relative to the current folder, never searched on $PATH)."""
    resolved = Path(os.path.abspath(path))
    if not resolved.is_file():
        raise Glm4LocalError(f"{path}: tool executable not found")
    if not os.access(resolved, os.X_OK):
        raise Glm4LocalError(f"{path}: tool executable is not executable (chmod +x it)")
    return resolved


def _error(message: str, **detail: str) -> str:
    return json.dumps({"error": message, **detail}, ensure_ascii=False)


def _drain(stream: IO[bytes], sink: bytearray, limit: int, over: threading.Event) -> None:
    """Keep the first `limit` bytes; flag when there were more (the caller then stops the tool). read1:
    what has arrived, without waiting for more (a background child may hold the pipe open)."""
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        room = limit - len(sink)
        sink += chunk[: max(room, 0)]
        if len(chunk) > room:
            over.set()
            return


def _drain_tail(stream: IO[bytes], sink: bytearray, limit: int) -> None:
    """Read to the end (so the tool never blocks on a full pipe), keeping the last `limit` bytes."""
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        sink += chunk
        del sink[:-limit]


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_tool(executable: Path, call: ToolCall, timeout: float = DEFAULT_TOOL_TIMEOUT,
             max_output: int = MAX_TOOL_OUTPUT) -> str:
    """Run the user's tool with the call as JSON on stdin; its stdout (as text) is the result.

    Every failure (cannot start, non-zero exit, too slow, too much output) becomes an observation
    the model reads, as JSON {"error": ...}; the chat goes on. Ctrl-C stops the tool and is passed on.
    """
    payload = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False).encode()
    become_subreaper()
    before = children()
    try:  # its own session: Ctrl-C reaches us, and we stop the tool with everything it started
        process = subprocess.Popen([str(executable)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        return _error(f"cannot run {executable.name}: {e.strerror}")
    try:
        return _collect(process, payload, timeout, max_output, before)
    finally:
        end_strays(before, process.pid)  # nothing it started outlives the call


def _collect(process: subprocess.Popen[bytes], payload: bytes, timeout: float, max_output: int,
             before: set[int]) -> str:
    out, err, over = bytearray(), bytearray(), threading.Event()
    readers = [threading.Thread(target=_drain, args=(process.stdout, out, max_output, over), daemon=True),
               threading.Thread(target=_drain_tail, args=(process.stderr, err, 4096), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert process.stdin is not None
            process.stdin.write(payload)
            process.stdin.close()
        deadline = time.monotonic() + timeout
        while process.poll() is None and not over.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
    except BaseException:
        _kill(process)
        raise
    if process.poll() is None:
        _kill(process)
        if not over.is_set():
            return _error(f"the tool did not finish within {timeout:g} s and was stopped")
    end_strays(before, process.pid)  # children holding the pipes open go too, so the readers reach the end
    for reader in readers:
        reader.join(timeout=1.0)
    text = out.decode("utf-8", errors="replace")
    if over.is_set():
        return text + f"\n[output cut at {max_output:,} bytes]"
    if process.returncode != 0:
        return _error(f"the tool exited with status {process.returncode}",
                      stderr=err.decode("utf-8", errors="replace")[-2000:], output=text[-2000:])
    return text


@dataclass(frozen=True)
class ToolRunner:
    """The user's tool executable (resolved once, at start) and how long a call may take."""

    executable: Path
    timeout: float = DEFAULT_TOOL_TIMEOUT

    @classmethod
    def for_path(cls, path: Path, timeout: float = DEFAULT_TOOL_TIMEOUT) -> ToolRunner:
        if not timeout > 0:
            raise Glm4LocalError(f"a tool timeout must be positive, not {timeout}")
        return cls(resolve_tool_executable(path), timeout)

    def run(self, call: ToolCall) -> str:
        return run_tool(self.executable, call, self.timeout)

"""Untrusted work in a child process, bounded in time and memory: a chat template (which is code), a
PDF, a DOCX or a web page whose parser may take hours or gigabytes over what a hostile file expands to.
None of that can be stopped inside this process (a long call into C holds even SIGTERM back), so such
work runs in `python -m MODULE`, whose main is `serve(JOBS)`: one JSON request per line on its stdin
(`{"job", "args"}`), one JSON reply per line on its stdout. A worker past its deadline, or that dies
(its address space is capped), is killed and started again at the next call. Only JSON crosses: a
parser that its input took over must not reach this process through its reply.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from glm4_local.core.errors import Glm4LocalError

MEMORY_FLAG = "--memory-bytes"


class WorkerFailure(Glm4LocalError):
    """The job failed: its own error, or the worker ran too long, out of memory, or crashed."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind  # "error" (the job's own), "timeout", "crashed"


class Worker:
    """The parent's side: one long-lived child, started when first needed, one job at a time."""

    def __init__(self, module: str, timeout: float, memory_bytes: int) -> None:
        self.module = module
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self._child: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()

    def call(self, job: str, args: Mapping[str, Any], timeout: float | None = None) -> Any:
        """The job's value; WorkerFailure when it failed, ran past `timeout` s, or crashed."""
        timeout = self.timeout if timeout is None else timeout
        request = json.dumps({"job": job, "args": args}, ensure_ascii=True).encode() + b"\n"
        with self._lock:
            child = self._start()
            try:
                assert child.stdin is not None
                child.stdin.write(request)
                child.stdin.flush()
                line = self._replies.get(timeout=timeout)
            except queue.Empty:
                self._stop()
                raise WorkerFailure(f"ran for more than {timeout:g} s and was stopped", "timeout") from None
            except OSError:
                line = b""
            except BaseException:  # Ctrl-C while it works: its reply must never reach the next caller
                self._stop()
                raise
            if not line:
                self._stop()
                raise WorkerFailure("ran out of memory (or crashed) and was stopped", "crashed")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerFailure(reply["error"])
        return reply["value"]

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            self._replies = queue.Queue()
            self._child = subprocess.Popen([sys.executable, "-m", self.module, MEMORY_FLAG, str(self.memory_bytes)],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL)
            threading.Thread(target=_pump, args=(self._child, self._replies), daemon=True).start()
        return self._child

    def _stop(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def close(self) -> None:
        with self._lock:
            self._stop()


class WorkerPool:
    """Several workers, so that one slow job does not hold up everybody else's; the most recently used
    idle worker is taken first. Children start only when first needed."""

    def __init__(self, module: str, size: int, timeout: float, memory_bytes: int) -> None:
        self.timeout = timeout
        self._idle: queue.LifoQueue[Worker] = queue.LifoQueue()
        self._all = [Worker(module, timeout, memory_bytes) for _ in range(size)]
        for worker in self._all:
            self._idle.put(worker)

    def call(self, job: str, args: Mapping[str, Any], timeout: float | None = None) -> Any:
        """As Worker.call; the time waiting for a free worker counts against the timeout too."""
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            worker = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise WorkerFailure(f"found no free worker within {timeout:g} s", "timeout") from None
        timeout = max(timeout - (time.monotonic() - started), 0.001)
        try:
            return worker.call(job, args, timeout)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        for worker in self._all:
            worker.close()


def _pump(child: subprocess.Popen[bytes], replies: queue.Queue[bytes]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        replies.put(line)
    replies.put(b"")  # the child is gone


def _limit_memory(argv: list[str]) -> None:
    if MEMORY_FLAG not in argv:
        return
    limit = int(argv[argv.index(MEMORY_FLAG) + 1])
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass  # not every system caps address space; the time limit still holds


def serve(jobs: Mapping[str, Callable[..., Any]], failures: tuple[type[BaseException], ...] = (Glm4LocalError,)
          ) -> None:
    """The child's side: each request's job run, its value (JSON) or why it failed written back. A job's
    `failures` are its own words; anything else is named by its type."""
    _limit_memory(sys.argv)
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            reply = {"ok": True, "value": jobs[request["job"]](**request["args"])}
        except failures as e:
            reply = {"ok": False, "error": str(e)}
        except MemoryError:
            reply = {"ok": False, "error": "ran out of memory"}
        except RecursionError:
            reply = {"ok": False, "error": "nested too deeply"}
        except Exception as e:  # a parser's own bug on odd input: the caller gets one line
            reply = {"ok": False, "error": f"failed ({type(e).__name__}: {e})"[:500]}
        sys.stdout.write(json.dumps(reply, ensure_ascii=True) + "\n")
        sys.stdout.flush()

"""Untrusted chat templates run in a child process, bounded in time and memory.

A template from a GGUF is code. Jinja folds constants while compiling (`{{ 9 ** 999999999 }}`
hangs before rendering starts), loops can run for hours, and strings can grow until memory runs
out; none of that can be stopped inside this process. So templates other than the published
ones are compiled and rendered by `python -m glm4_local.chat.template_worker`, one JSON request
per line on its stdin, one JSON reply per line on its stdout; a worker that takes too long is
killed and replaced, and its address space is capped.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any

from glm4_local.chat.jinja_render import RenderFailure, render_source

TIMEOUT_SECONDS = 5.0
MEMORY_BYTES = 1024 * 1024 * 1024


class TemplateWorker:
    """The parent's side: one long-lived child, started when first needed."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._child: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()

    def render(self, source: str, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        request = json.dumps({"source": source, "messages": messages, "add": add_generation_prompt},
                             ensure_ascii=True).encode() + b"\n"
        with self._lock:  # one request at a time per worker
            child = self._start()
            try:
                assert child.stdin is not None
                child.stdin.write(request)
                child.stdin.flush()
                line = self._replies.get(timeout=self.timeout)
            except queue.Empty:
                self._stop()
                raise RenderFailure(f"ran for more than {self.timeout:g} s and was stopped") from None
            except OSError:
                line = b""
            if not line:
                self._stop()
                raise RenderFailure("ran out of memory (or crashed) and was stopped")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RenderFailure(reply["error"])
        return str(reply["text"])

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            self._replies = queue.Queue()
            self._child = subprocess.Popen([sys.executable, "-m", "glm4_local.chat.template_worker"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL)
            threading.Thread(target=_pump, args=(self._child, self._replies), daemon=True).start()
        return self._child

    def _stop(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None


class TemplatePool:
    """Several workers, so that one request's slow template does not hold up everybody else's (each
    worker renders one request at a time); the most recently used idle worker is taken first."""

    def __init__(self, size: int = max(2, min(4, os.cpu_count() or 2)), timeout: float = TIMEOUT_SECONDS) -> None:
        self._idle: queue.LifoQueue[TemplateWorker] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(TemplateWorker(timeout))  # each starts its child when first used

    def render(self, source: str, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        worker = self._idle.get()
        try:
            return worker.render(source, messages, add_generation_prompt)
        finally:
            self._idle.put(worker)


def _pump(child: subprocess.Popen[bytes], replies: queue.Queue[bytes]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        replies.put(line)
    replies.put(b"")  # the child is gone


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass  # not every system caps address space; the time limit still holds


def serve() -> None:
    _limit_memory()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            reply = {"ok": True, "text": render_source(request["source"], request["messages"], request["add"])}
        except RenderFailure as e:
            reply = {"ok": False, "error": str(e)}
        except MemoryError:
            reply = {"ok": False, "error": "ran out of memory"}
        sys.stdout.write(json.dumps(reply, ensure_ascii=True) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()

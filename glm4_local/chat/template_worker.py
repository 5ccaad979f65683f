"""Untrusted chat templates run in a child process, bounded in time and memory.

A template from a GGUF is code. Jinja folds constants while compiling (`{{ 9 ** 999999999 }}`
hangs before rendering starts), loops can run for hours, and strings can grow until memory runs
out; none of that can be stopped inside this process. So templates other than the published
ones are compiled and rendered by `python -m glm4_local.chat.template_worker` (core/worker.py: one
JSON request per line, killed and replaced past its deadline, its address space capped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from glm4_local.chat.jinja_render import RenderFailure, render_source
from glm4_local.core.worker import WorkerFailure, WorkerPool, serve

TIMEOUT_SECONDS = 5.0
MEMORY_BYTES = 1024 * 1024 * 1024


class TemplatePool:
    """Several workers, so that one request's slow template does not hold up the other requests (each
    worker renders one request at a time)."""

    def __init__(self, size: int = max(2, min(4, os.cpu_count() or 2)), timeout: float = TIMEOUT_SECONDS) -> None:
        self.pool = WorkerPool(__name__, size, timeout, MEMORY_BYTES)

    def render(self, source: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return str(self.pool.call("render", {"source": source, "messages": messages,
                                                 "add_generation_prompt": add_generation_prompt}))
        except WorkerFailure as e:
            raise RenderFailure(str(e)) from None


if __name__ == "__main__":
    serve({"render": render_source}, failures=(RenderFailure,))

"""Real llama.cpp `llama-server` processes for the tests of `serve --engine`, on free 127.0.0.1 ports.

The binary is built once per machine from the llama.cpp sources llama-cpp-python vendors (the same commit our
llama.cpp runs) by `bash benchmarks/build_llama_server.sh`, which .ci/run calls when it is missing; it lies in
the user's cache folder (or where $LLAMA_SERVER says).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from glm4_local.core.llama import door
from helpers import children

READY_TIMEOUT = 60.0


def binary() -> Path:
    """Where the build script puts llama-server (skips the test, saying how to get it, when it is not there)."""
    if given := os.environ.get("LLAMA_SERVER"):
        path = Path(given)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = cache / "glm4-local" / f"llama-server-{importlib.metadata.version('llama-cpp-python')}" / "llama-server"
    if not path.is_file():
        pytest.skip(f"no llama-server at {path} (bash benchmarks/build_llama_server.sh builds it; .ci/run does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama-server serving `model` with `slots` slots of `slot_ctx` tokens each. Ended with the test that
    started it, unless `shared` (a fixture of wider scope, which kills it itself)."""

    def __init__(self, model: Path, log: Path, slots: int = 2, slot_ctx: int = 2048, port: int | None = None,
                 *args: str, shared: bool = False) -> None:
        self.model, self.log, self.slots, self.slot_ctx, self.args = model, log, slots, slot_ctx, args
        self.shared = shared
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        path = binary()
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(path.parent),
                                                                             os.environ.get("LD_LIBRARY_PATH")]))}
        command = [str(path), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port), "--no-webui",
                   "-np", str(self.slots), "-c", str(self.slots * self.slot_ctx), "-t", "2", "--no-warmup", *self.args]
        if not door.cpu_repacking()[0]:  # llama-server's weights where ours are (its AMX buffer may crash here)
            command.append("--no-repack")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if not self.shared:
            children.started(self.process)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until /health answers 200 (llama-server tells readiness only by answering)."""
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.process.returncode}):\n{self.log.read_text()[-2000:]}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)  # a process we do not own: it tells readiness only by answering
        raise RuntimeError("llama-server not ready in time")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    def busy_slots(self) -> int:
        status, slots = self.get("/slots")
        assert status == 200, status
        return sum(1 for slot in slots if slot["is_processing"])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

"""llama.cpp's own `llama-server`, for benchmarks that compare with it (not a dependency of the project).

Build it once from the llama.cpp sources vendored in the llama-cpp-python sdist that glm4-local runs on
(the same commit as our llama.cpp), as an optional benchmark step:

    bash benchmarks/build_llama_server.sh          # prints the binary's path; or set LLAMA_SERVER

A benchmark then starts it on a free 127.0.0.1 port with `LlamaServer(binary, model, *args)`.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from glm4_local.core.llama import door

READY_TIMEOUT = 120.0
_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_BINARY = Path(os.environ.get("LLAMA_SERVER") or _CACHE / "glm4-local" /
                      f"llama-server-{importlib.metadata.version('llama-cpp-python')}" / "llama-server")


def exit_unless_built(binary: Path, tokenizer: Path) -> None:
    """End a benchmark that runs llama.cpp's own binaries with one line where it cannot run: `binary` not built, or
    GLM-4's tokenizer (which the models it builds take their vocabulary from) not in ../shared."""
    if not binary.is_file():
        sys.exit(f"{binary}: no {binary.name}; build it with benchmarks/build_llama_server.sh")
    if not tokenizer.is_file():
        sys.exit("GLM-4's tokenizer.model not found in ../shared")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary_env(binary: Path) -> dict[str, str]:
    """The environment to run a binary the build script copied: its shared libraries (libllama-server-impl,
    libggml, ...) lie beside it, where the build tree's run path no longer points."""
    paths = [str(binary.parent), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep))]
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}


class LlamaServer:
    """A llama-server process serving `model`; `port` answers the OpenAI-style API like ours."""

    def __init__(self, binary: Path, model: Path, *args: str, log: Path | None = None) -> None:
        self.port = free_port()
        command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                   "--no-webui", "--no-warmup", "-lv", "1", *args]
        if not door.cpu_repacking()[0]:  # its weights where glm4-local keeps ours (its AMX buffer may crash here)
            command.append("--no-repack")
        self._log = open(log or os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=binary_env(binary))
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self.process.returncode}")
            try:
                if self.json("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)  # polling a process we do not own: it announces readiness only by answering
        raise RuntimeError("llama-server not ready in time")

    def json(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        connection.request(method, path, json.dumps(body) if body is not None else None,
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        status, data = response.status, response.read()
        connection.close()
        return status, json.loads(data) if data else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

"""A real `glm4-local serve` process on a free 127.0.0.1 port, and plain-HTTP helpers for the tests."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT = 60.0


class Server:
    def __init__(self, model: Path, workdir: Path, *args: str) -> None:
        env = {**os.environ, "GLM4_LOCAL_HOME": str(workdir / "home"), "PYTHONUNBUFFERED": "1"}
        env.pop("GLM4_LOCAL_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "glm4_local", "serve", str(model), "--port", "0", "--threads", "2", *args],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.port = 0
        self._drain: threading.Thread | None = None
        self._said = threading.Condition()  # a line came, or the output ended
        self._ended = False
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Until it says "ready" (its output is read as it comes, by a thread of its own, so it never fills the
        pipe, and lines that arrive together are each seen)."""
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()
        deadline = time.monotonic() + READY_TIMEOUT
        with self._said:
            while not any(line.strip() == "ready" for line in self.output):
                if self._ended:
                    raise RuntimeError("server exited:\n" + "".join(self.output))
                if not self._said.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError("server not ready in time:\n" + "".join(self.output))

    def _read_rest(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._said:
                self.output.append(line)
                if not self.port and (match := re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)):
                    self.port = int(match.group(1))
                self._said.notify_all()
        with self._said:
            self._ended = True
            self._said.notify_all()

    @property
    def flash_attention(self) -> bool:
        """Whether it runs with flash attention (its start-up line says so)."""
        return any(line.startswith("serving ") and ", flash attention)" in line for line in self.output)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, api_key: str = "unused", **options: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=60, **options)

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return result

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def metrics(self) -> dict[str, float]:
        _, _, data = self.request("GET", "/metrics")
        return {name: float(value) for name, value in
                (line.split() for line in data.decode().splitlines() if line and not line.startswith("#"))}

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        if self._drain is not None:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._drain.join(timeout=20)
            return self.process.returncode, "".join(self.output)
        try:
            rest, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        return self.process.returncode, "".join(self.output) + (rest or "")

"""Start-up and memory: `glm4-local serve` against llama.cpp's `llama-server` on the same GGUF (GLM-4's real
151,552-token vocabulary, 4 layers × 512, q8_0, as benchmarks/against_llama_server.py builds it), the same
context, slots and threads, rounds interleaved; every figure a ratio measured in this run.

1. launch → first `/health` 200 (the model loaded, requests answered);
2. launch → the first token of a one-token chat request (`glm4-local chat -p` as a user runs it, against
   llama-server started, asked, answered);
3. peak resident memory (VmHWM) of each server after that request.

    bash benchmarks/build_llama_server.sh             # once; optional step, ~8 minutes on 2 cores
    python benchmarks/startup.py [--llama-server PATH] [--rounds 5] [--model GGUF] [--other-python PYTHON]

`--other-python`: glm4-local run by another interpreter too (a virtual environment with other versions of the
dependencies, e.g. `python -m venv --system-site-packages V && V/bin/pip install "typer==0.29.*"`), interleaved
with the rest, and compared with this one's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import SMALL, THREADS
from helpers import factory
from llama_server import DEFAULT_BINARY, binary_env, free_port

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert

CTX = 4096
POLL_SECONDS = 0.005  # how often a process we launched is asked whether it answers yet


def _health(port: int) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/health")
        status = connection.getresponse().status
        connection.close()
        return status
    except OSError:
        return None


def _ask_one_token(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    answer = json.loads(connection.getresponse().read())
    connection.close()
    assert answer["usage"]["completion_tokens"] == 1, answer


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_command(which: str, binary: Path, model: Path, port: int, python: str = sys.executable) -> list[str]:
    if which != "llama-server":
        return [python, "-m", "glm4_local", "serve", str(model), "--port", str(port), "--ctx", str(CTX),
                "--parallel", "1", "--threads", str(THREADS), "--quiet"]
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(CTX), "-np", "1",
            "-t", str(THREADS), "-tb", str(THREADS), "--no-webui"]


def one_server_run(which: str, binary: Path, model: Path, home: Path, python: str = sys.executable
                   ) -> tuple[float, float, float]:
    """(seconds to the first /health 200, seconds to the first token, peak RSS in MiB) of one launch."""
    port = free_port()
    env = {**binary_env(binary), "GLM4_LOCAL_HOME": str(home)}
    started = time.perf_counter()
    process = subprocess.Popen(serve_command(which, binary, model, port, python), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while _health(port) != 200:
            if process.poll() is not None:
                raise RuntimeError(f"{which} exited with {process.returncode}")
            time.sleep(POLL_SECONDS)
        ready = time.perf_counter() - started
        _ask_one_token(port)
        first_token = time.perf_counter() - started
        return ready, first_token, _peak_rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def chat_first_token(model: Path, home: Path) -> tuple[float, float]:
    """Seconds from launching `glm4-local chat MODEL -p hi --max-tokens 1` to the first byte of its answer on
    stdout, and to its exit."""
    env = {**os.environ, "GLM4_LOCAL_HOME": str(home)}
    command = [sys.executable, "-m", "glm4_local", "chat", str(model), "-p", "hi", "--max-tokens", "1",
               "--ctx", str(CTX), "--threads", str(THREADS), "--temp", "0"]
    started = time.perf_counter()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        first = process.stdout.read(1)
        answered = time.perf_counter() - started
        process.stdout.read()
        assert process.wait() == 0 and first, "the chat gave no answer"
    return answered, time.perf_counter() - started


def command_seconds(python: str, home: Path) -> float:
    """Seconds from launching `glm4-local list` (the CLI parsed, the model store read) to its exit."""
    started = time.perf_counter()
    subprocess.run([python, "-m", "glm4_local", "list"], env={**os.environ, "GLM4_LOCAL_HOME": str(home)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def build_model(folder: Path) -> Path:
    spec = factory.Spec(dtype="bf16", shape=SMALL, real_tokenizer=True)
    factory.build_checkpoint(folder / "small", spec)
    return convert(str(folder / "small"), OUT_TYPES["q8_0"], output=folder / "small-q8_0.gguf").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of the generated one")
    parser.add_argument("--other-python", help="also run glm4-local with this interpreter, and compare")
    args = parser.parse_args()
    other = f"glm4-local ({args.other_python})"
    pythons = {"glm4-local": sys.executable, other: args.other_python, "llama-server": sys.executable}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model or build_model(folder)
        runs: dict[str, list[tuple[float, float, float]]] = {"glm4-local": [], "llama-server": []}
        if args.other_python:
            runs[other] = []
        chats: list[tuple[float, float]] = []
        commands: dict[str, list[float]] = {python: [] for python in (sys.executable, args.other_python) if python}
        for which in runs:  # warm the page cache for both
            one_server_run(which, args.llama_server, model, folder / "home", pythons[which])
        for _ in range(args.rounds):
            for which in runs:
                runs[which].append(one_server_run(which, args.llama_server, model, folder / "home", pythons[which]))
            chats.append(chat_first_token(model, folder / "home"))
            for python, seconds in commands.items():
                seconds.append(command_seconds(python, folder / "home"))
    median = {which: [statistics.median(r[i] for r in values) for i in range(3)] for which, values in runs.items()}
    ours, theirs = median["glm4-local"], median["llama-server"]
    print(f"model {model.name}, context {CTX}, {THREADS} threads, {args.rounds} rounds (medians)")
    for i, what in enumerate(("launch → /health 200", "launch → first token (serve)")):
        print(f"{what}: glm4-local {ours[i]:.2f} s, llama-server {theirs[i]:.2f} s; ratio {ours[i] / theirs[i]:.2f}")
    answered, ended = (statistics.median(c[i] for c in chats) for i in range(2))
    print(f"launch → first token (glm4-local chat -p): {answered:.2f} s; ratio to llama-server's serve "
          f"{answered / theirs[1]:.2f} (the process ends at {ended:.2f} s)")
    print(f"peak RSS: glm4-local {ours[2]:.0f} MiB, llama-server {theirs[2]:.0f} MiB; "
          f"difference {ours[2] - theirs[2]:+.0f} MiB")
    for python, seconds in commands.items():
        print(f"launch → exit of `glm4-local list` with {python}: {statistics.median(seconds):.2f} s")
    if args.other_python:
        mine = [r[0] for r in runs["glm4-local"]]
        print(f"launch → /health 200 with {args.other_python}: {median[other][0]:.2f} s; ratio to llama-server "
              f"{median[other][0] / theirs[0]:.2f}; this interpreter's over it, per round: "
              + ", ".join(f"{a / b[0]:.2f}" for a, b in zip(mine, runs[other], strict=True))
              + f" (median {statistics.median(a / b[0] for a, b in zip(mine, runs[other], strict=True)):.2f})")


if __name__ == "__main__":
    main()

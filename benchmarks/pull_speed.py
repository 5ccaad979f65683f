"""What `glm4-local pull` costs on top of the download itself, and what a resumed pull fetches again.

    python benchmarks/pull_speed.py

A community-style q8_0 GGUF with GLM-4's own 151,552-token vocabulary (benchmarks/convert_memory.py's
"small" shape, as llama.cpp's converter writes GLM-4) is served by the test Hub on 127.0.0.1
(tests/helpers/hubserver.py). In the same run, interleaved: the Hub client's own `hf_hub_download` of the file
(the baseline: bytes to disk, nothing checked) and `glm4-local pull` of it (download, sha256, repair, the
tokenizer check, publish), each in a child process. Then the most disk a pull's store takes (sampled),
and a pull interrupted half-way (SIGINT) and run again: the bytes the server sent in all, against the
file's size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convert_memory import SIZES
from helpers.hubserver import LocalHub
from repair_memory import community_gguf

REPO, FILE = "bench/glm-4-9b-chat-GGUF", "glm-4-9b-chat-Q8_0.gguf"
ROUNDS = 3


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = community_gguf(root / "small", SIZES["small"]).read_bytes()
        hub = LocalHub()
        hub.add(REPO, {FILE: data})
        with hub.running():
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                   "HF_HUB_CACHE": str(root / "hf")}
            env.pop("HF_HUB_OFFLINE", None)
            plain, pulled = [], []
            for i in range(ROUNDS):
                target = root / f"plain{i}"
                plain.append(timed([sys.executable, "-c", "import sys; from huggingface_hub import hf_hub_download; "
                                    f"hf_hub_download({REPO!r}, {FILE!r}, local_dir=sys.argv[1])", str(target)], env))
                shutil.rmtree(target)
                home = root / f"home{i}"
                pulled.append(timed([sys.executable, "-m", "glm4_local", "pull", f"{REPO}/{FILE}", "-q"],
                                    env | {"GLM4_LOCAL_HOME": str(home)}))
                shutil.rmtree(home)
            peak = peak_disk([sys.executable, "-m", "glm4_local", "pull", f"{REPO}/{FILE}", "-q"],
                             env | {"GLM4_LOCAL_HOME": str(root / "peak")}, root / "peak")
            sent = resumed_bytes(hub, env | {"GLM4_LOCAL_HOME": str(root / "resumed")}, len(data))
    print(f"file: {len(data) / 1e6:.0f} MB, {ROUNDS} rounds interleaved, medians")
    ratio = median(pulled) / median(plain)
    print(f"hf_hub_download (download only)          {median(plain):6.2f} s")
    print(f"glm4-local pull (+sha256, repair, check) {median(pulled):6.2f} s   ratio {ratio:.2f}")
    print(f"peak disk used by the store during a pull: {peak / len(data):.2f}× the file")
    print(f"interrupted at half and pulled again: {sent / len(data):.3f} of the file's bytes sent in all")


def peak_disk(args: list[str], env: dict[str, str], folder: Path) -> int:
    """The most disk the files under `folder` took while `args` ran (sampled every 20 ms)."""
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while child.poll() is None:
        peak = max(peak, _disk_used(folder))
        time.sleep(0.02)
    return peak


def _disk_used(folder: Path) -> int:
    used = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # a file renamed or removed while it is counted
            used += path.stat().st_blocks * 512 if path.is_file() else 0
    return used


def resumed_bytes(hub: LocalHub, env: dict[str, str], size: int) -> int:
    """A pull stopped (SIGINT) once the server has sent half the file, then the same pull again."""
    hub.faults.hold_after[FILE] = size // 2
    child = subprocess.Popen([sys.executable, "-m", "glm4_local", "pull", f"{REPO}/{FILE}", "-q"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hub.faults.holding.wait(120)
    time.sleep(1)  # the client writes what it received (10 MiB pieces) before it reads on
    child.send_signal(signal.SIGINT)
    child.wait(60)
    hub.faults.release.set()
    before = len(hub.gets(FILE))
    subprocess.run([sys.executable, "-m", "glm4_local", "pull", f"{REPO}/{FILE}", "-q"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranges = hub.gets(FILE)[before:]
    resumed_from = int(ranges[-1][6:].split("-")[0]) if ranges and ranges[-1] else 0
    return size // 2 + (size - resumed_from)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    main()

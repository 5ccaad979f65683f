"""Peak memory of `glm4-local repair` on community-style GGUFs of two sizes (GLM-4's own vocabulary).

    python benchmarks/repair_memory.py

For each size: a generated bf16 checkpoint (as benchmarks/convert_memory.py makes them) is converted
to q8_0, rewritten the way llama.cpp's own converter writes GLM-4 (pre-tokenizer chatglm-bpe, one
merge per token, no end-of-message id), then repaired by the real CLI in a child process whose
/proc status is sampled every 20 ms. Tensor data is streamed, so peak RssAnon should not grow with
the file; the time is reported next to a plain copy of the same file made in the same run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convert_memory import SIZES, peak_memory, stream_checkpoint
from helpers import factory


def community_gguf(folder: Path, shape: factory.Shape) -> Path:
    """A q8_0 GGUF of a generated checkpoint of `shape`, written as llama.cpp's converter writes GLM-4."""
    stream_checkpoint(folder / "ckpt", shape)
    ours = folder / "ours-q8_0.gguf"
    subprocess.run([sys.executable, "-m", "glm4_local", "convert", str(folder / "ckpt"), "-t", "q8_0", "-o",
                    str(ours), "-q"], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(folder / "ckpt")
    hub = factory.write_community_gguf(ours, folder / "hub.gguf")
    ours.unlink()
    return hub


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, shape in SIZES.items():
            folder = Path(tmp) / label
            hub = community_gguf(folder, shape)
            started = time.perf_counter()
            shutil.copyfile(hub, folder / "copy.gguf")
            copy_seconds = time.perf_counter() - started
            (folder / "copy.gguf").unlink()
            seconds, anon, rss = peak_memory([sys.executable, "-m", "glm4_local", "repair", str(hub), "-o",
                                              str(folder / "fixed.gguf"), "-q"])
            size = hub.stat().st_size
            rows.append((label, size, anon, rss, seconds, copy_seconds))
            shutil.rmtree(folder)
    print(f"{'file':6} {'GB':>6} {'peak RssAnon':>13} {'peak RSS':>9} {'repair s':>9} {'plain copy s':>13}")
    for label, size, anon, rss, seconds, copy_seconds in rows:
        print(f"{label:6} {size / 1e9:6.2f} {anon / 2**30:9.2f} GiB {rss / 2**30:5.2f} GiB {seconds:9.1f} "
              f"{copy_seconds:13.1f}")


if __name__ == "__main__":
    main()

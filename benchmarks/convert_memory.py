"""Peak memory and throughput of `glm4-local convert` on generated checkpoints of two sizes.

    python benchmarks/convert_memory.py [--types f16,q8_0,q4_k_m] [--keep DIR]

For each size and output type it runs the real CLI in a child process, samples the child's
/proc/PID/status every 20 ms, and reports peak anonymous memory (RssAnon: what the process itself
holds; file-backed page cache is reclaimable and excluded) beside peak RSS, with throughput in input
GB/s next to a plain copy of the same bytes measured in the same run. If conversion holds tensors
rather than streaming them, peak RssAnon grows with checkpoint size; streaming keeps it flat.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import factory

REAL_TOKENIZER_AVAILABLE = factory.REAL_TOKENIZER.is_file()
SIZES = {
    # 151552-row embedding and output as in GLM-4-9B; layers scaled down to fit these machines.
    "small": factory.Shape(n_layer=2, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=3424),
    "large": factory.Shape(n_layer=4, n_embd=4096, n_head=32, n_head_kv=2, head_dim=128, n_ff=13696),
}


def stream_checkpoint(folder: Path, shape: factory.Shape, seed: int = 0) -> int:
    """Write a bf16 GLM-4 checkpoint (original layout, 2 shards) tensor by tensor; return its bytes."""
    spec = factory.Spec(shape=shape, real_tokenizer=REAL_TOKENIZER_AVAILABLE)
    folder.mkdir(parents=True)
    tokens, n_ranks, vocab = factory.vocabulary(spec)
    if tokens is None:
        shutil.copyfile(factory.REAL_TOKENIZER, folder / "tokenizer.model")
    else:
        factory.write_tokenizer_model(folder / "tokenizer.model", tokens)
    (folder / "tokenizer_config.json").write_text(json.dumps(factory.tokenizer_config(n_ranks)))
    (folder / "config.json").write_text(json.dumps(factory.chatglm_config(shape, vocab, n_ranks)))
    shapes = tensor_shapes(shape, vocab)
    names = list(shapes)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    rng = np.random.default_rng(seed)
    total = 0
    weight_map = {}
    for k, part in enumerate(halves):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        total += write_streamed(folder / file, {n: shapes[n] for n in part}, rng)
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return total


def tensor_shapes(s: factory.Shape, vocab: int) -> dict[str, tuple[int, ...]]:
    qkv = s.n_head * s.head_dim + 2 * s.n_head_kv * s.head_dim
    out = {"transformer.embedding.word_embeddings.weight": (vocab, s.n_embd)}
    for i in range(s.n_layer):
        p = f"transformer.encoder.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (s.n_embd,),
            p + "self_attention.query_key_value.weight": (qkv, s.n_embd),
            p + "self_attention.query_key_value.bias": (qkv,),
            p + "self_attention.dense.weight": (s.n_embd, s.n_head * s.head_dim),
            p + "post_attention_layernorm.weight": (s.n_embd,),
            p + "mlp.dense_h_to_4h.weight": (2 * s.n_ff, s.n_embd),
            p + "mlp.dense_4h_to_h.weight": (s.n_embd, s.n_ff),
        }
    out["transformer.encoder.final_layernorm.weight"] = (s.n_embd,)
    out["transformer.output_layer.weight"] = (vocab, s.n_embd)
    return out


def write_streamed(path: Path, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> int:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with path.open("wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for shape in shapes.values():
            n = int(np.prod(shape))
            for start in range(0, n, 1 << 24):
                chunk = rng.standard_normal(min(1 << 24, n - start), dtype=np.float32) * 0.02
                f.write(factory.to_bf16_bits(chunk).tobytes())
    return offset


def peak_memory(cmd: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RssAnon bytes, peak VmRSS bytes) of a child process, sampled every 20 ms."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "VmRSS": 0}

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.02)

    started = time.perf_counter()
    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {stderr.decode()}")
    return seconds, peaks["RssAnon"], peaks["VmRSS"]


def copy_speed(folder: Path, dest: Path) -> float:
    started = time.perf_counter()
    for f in folder.glob("*.safetensors"):
        shutil.copyfile(f, dest / f.name)
    seconds = time.perf_counter() - started
    for f in dest.glob("*.safetensors"):
        f.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", default="f16,q8_0,q4_k_m")
    parser.add_argument("--dir", type=Path, help="where to generate (default: a temporary folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir))
    rows = []
    try:
        for label, shape in SIZES.items():
            folder = work / label
            nbytes = stream_checkpoint(folder, shape)
            copy_dir = work / "copy"
            copy_dir.mkdir(exist_ok=True)
            copy_s = copy_speed(folder, copy_dir)
            for outtype in args.types.split(","):
                out = work / f"{label}-{outtype}.gguf"
                cmd = [sys.executable, "-m", "glm4_local", "convert", str(folder), "-t", outtype, "-o", str(out), "-q"]
                seconds, anon, rss = peak_memory(cmd)
                rows.append({"size": label, "input_gb": nbytes / 1e9, "type": outtype, "seconds": seconds,
                             "peak_rss_anon_gib": anon / 2**30, "peak_rss_gib": rss / 2**30,
                             "input_gb_per_s": nbytes / 1e9 / seconds, "copy_gb_per_s": nbytes / 1e9 / copy_s})
                out.unlink()
                r = rows[-1]
                print(f"{label:5} {r['input_gb']:6.2f} GB {outtype:7} {seconds:7.1f} s  "
                      f"anon {r['peak_rss_anon_gib']:5.2f} GiB  rss {r['peak_rss_gib']:5.2f} GiB  "
                      f"{r['input_gb_per_s']:5.2f} GB/s (copy {r['copy_gb_per_s']:5.2f} GB/s, "
                      f"ratio {r['input_gb_per_s'] / r['copy_gb_per_s']:.2f})", flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

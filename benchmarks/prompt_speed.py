"""Reading long prompts: glm4-local's prompt reading against llama-bench's semantics (one context,
llama_decode over the whole prompt in batches, nothing between them), batch sizes and flash attention
to choose the defaults, a resumed conversation from the disk prompt cache against reading it again,
and the cache file's size per token against the KV arithmetic. Every ratio from one run, interleaved.

    python benchmarks/prompt_speed.py [--sizes 512,4096,16384,32768] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import llama_cpp as ll
from helpers import factory

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.core.llama import door
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.prompt_cache import entries_on_disk
from glm4_local.core.llama.sampling import SamplerSettings

SHAPE = factory.Shape(n_layer=8, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=2816, context=65536)
THREADS = os.cpu_count() or 2


def build_model(folder: Path) -> Path:
    factory.build_checkpoint(folder / "ckpt", factory.Spec(dtype="f32", shape=SHAPE))
    return convert(str(folder / "ckpt"), OUT_TYPES["q8_0"], output=folder / "bench-q8_0.gguf").path


def bare_seconds(model: object, prompt: list[int], batch: int, flash: bool) -> float:
    """llama-bench -p N: a fresh context, the prompt in `batch`-token llama_decode calls, nothing else."""
    params = ll.llama_context_default_params()
    params.n_ctx = len(prompt) + 16
    params.n_batch = params.n_ubatch = batch
    params.n_threads = params.n_threads_batch = THREADS
    params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.no_perf = True
    ctx = ll.llama_init_from_model(model.model, params)  # type: ignore[attr-defined]
    try:
        started = time.perf_counter()
        for start in range(0, len(prompt), batch):
            piece = prompt[start:start + batch]
            tokens = (ll.llama_token * len(piece))(*piece)
            if ll.llama_decode(ctx, ll.llama_batch_get_one(tokens, len(piece))) != 0:
                raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started
    finally:
        ll.llama_free(ctx)


def ours_seconds(facts: ModelFacts, prompt: list[int], batch: int, flash: bool, cache: Path | None = None) -> float:
    """Our decoder reading the prompt to its first token (a fresh runtime: nothing in RAM)."""
    options = RuntimeOptions(ctx=len(prompt) + 16, threads=THREADS, batch=batch, flash_attn=flash,
                             prompt_cache=cache)
    runtime = load_runtime(facts, options)
    job = Job(list(prompt), SamplerSettings(temperature=0.0), 1, frozenset())
    runtime.decoder.submit(job)
    while runtime.decoder.has_work():
        runtime.decoder.step()
    if runtime.decoder.disk is not None:
        runtime.decoder.disk.close()
    runtime.decoder.close()
    return job.first_token_at - job.started_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,4096,16384")
    parser.add_argument("--batches", default="256,512,1024,2048")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resume", type=int, default=16384, help="tokens of the resumed conversation")
    args = parser.parse_args()
    rng = random.Random(0)
    report: dict[str, object] = {"threads": THREADS, "model": "8 layers x 1024, q8_0"}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp))
        facts, model = ModelFacts.read(path), door.load_model(path)
        vocab = 300
        for flash in (False, True):
            for n in (int(s) for s in args.sizes.split(",")):
                prompt = [rng.randrange(1, vocab) for _ in range(n)]
                bare, ours = [], []
                for _ in range(args.rounds):
                    bare.append(bare_seconds(model, prompt, 512, flash))
                    ours.append(ours_seconds(facts, prompt, 512, flash))
                key = f"{'fa' if flash else 'nofa'}_{n}"
                report[f"bare_tps_{key}"] = round(n / statistics.median(bare), 1)
                report[f"ours_tps_{key}"] = round(n / statistics.median(ours), 1)
                report[f"ratio_{key}"] = round(statistics.median(bare) / statistics.median(ours), 3)
        prompt = [rng.randrange(1, vocab) for _ in range(4096)]
        for batch in (int(b) for b in args.batches.split(",")):
            seconds = statistics.median(ours_seconds(facts, prompt, batch, False) for _ in range(args.rounds))
            report[f"ours_tps_4096_batch_{batch}"] = round(4096 / seconds, 1)
        prompt = [rng.randrange(1, vocab) for _ in range(args.resume)]
        cache = Path(tmp) / "cache"
        cold = ours_seconds(facts, prompt, 512, True, cache)  # reads it, saves it
        [(_, size, _)] = entries_on_disk(cache)
        warm = statistics.median(ours_seconds(facts, prompt, 512, True, cache) for _ in range(args.rounds))
        kv = facts.kv_cache_bytes(1, RuntimeOptions())
        report.update({"resume_tokens": args.resume, "resume_read_s": round(cold, 3), "resume_from_disk_s":
                       round(warm, 3), "resume_ratio": round(warm / cold, 4),
                       "cache_bytes_per_token": round(size / (args.resume + 1), 1), "kv_bytes_per_token_f16": kv})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

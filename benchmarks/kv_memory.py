"""Peak memory of a long-context chat with an f16 and a q8_0 KV cache, against the context plan.

    python benchmarks/kv_memory.py [--ctx 32768]

Each case runs in a process of its own (a clean peak): it loads a generated GLM-4-shaped model with
`--ctx` tokens of context, reads a prompt that fills it (the attention scores buffer grows with the
tokens already in the cache), and reports its peak RSS growth over the interpreter with llama.cpp
loaded. The plan's figure for the
same case is weights + KV cache + compute buffers (its fixed allowance for the runtime left out, since
the baseline already holds the runtime).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import factory

from glm4_local.chat.context_plan import plan_context
from glm4_local.chat.options import RuntimeOptions, parse_cache_type
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.device import Memory
from glm4_local.core.llama.sampling import SamplerSettings

SHAPE = factory.Shape(n_layer=8, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=2816, context=65536)


def options_for(kv: str, ctx: int) -> RuntimeOptions:
    qtype = parse_cache_type(kv)
    return RuntimeOptions(ctx=ctx, threads=2, cache_type_k=qtype, cache_type_v=qtype, mmap=False)


def high_water_mib() -> float:
    """This process's peak RSS (VmHWM: per address space, so a fresh one after exec; getrusage's maxrss
    carries the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: Path, kv: str, ctx: int) -> dict[str, float]:
    """In this process: peak RSS growth for one case (MiB)."""
    facts = ModelFacts.read(model)
    import llama_cpp  # noqa: F401 (its libraries are part of the baseline, not of the case)

    before = high_water_mib()
    runtime = load_runtime(facts, options_for(kv, ctx))
    decoder = runtime.decoder
    prompt = [1 + i % 299 for i in range(ctx - 16)]  # the whole context: the scores buffer at its largest
    decoder.submit(Job(prompt, SamplerSettings(temperature=0.0), 1, frozenset()))
    while decoder.has_work():
        decoder.step()
    peak = high_water_mib()
    plan = plan_context(facts.family, facts.hparams, model.stat().st_size, options_for(kv, ctx), Memory(None))
    planned = (plan.weights_bytes + plan.kv_bytes + plan.compute_bytes) / 2**20
    return {"measured_mib": round(peak - before, 1), "planned_mib": round(planned, 1),
            "kv_mib": round(plan.kv_bytes / 2**20, 1), "ratio": round((peak - before) / planned, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # model path, KV type: one measurement
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(Path(args.case[0]), args.case[1], args.ctx)))
        return
    report: dict[str, object] = {"ctx": args.ctx}
    with tempfile.TemporaryDirectory() as tmp:
        factory.build_checkpoint(Path(tmp) / "ckpt", factory.Spec(dtype="f32", shape=SHAPE))
        model = convert(str(Path(tmp) / "ckpt"), OUT_TYPES["q8_0"], output=Path(tmp) / "m.gguf").path
        for kv in ("f16", "q8_0"):
            out = subprocess.run([sys.executable, __file__, "--ctx", str(args.ctx), "--case", str(model), kv],
                                 capture_output=True, text=True, check=True).stdout
            report[kv] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Measure each output type's agreement with the numpy reference on tiny random GLM-4 checkpoints.

    python benchmarks/quant_errors.py [--types q4_k_m ...] [--out benchmarks/out/quant_errors.json]

Prints, per output type, the worst max-abs logit error, the worst top-1 agreement and the worst mean
KL divergence over several checkpoints (seeds, layouts, KV groups, rope ratios, and GLM-4's own
151552-token vocabulary when ../shared has it). These numbers set
the limits in convert/outtypes.py and the table in the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import factory

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.gguf_tools.verify import verify

CHECKPOINTS = {
    "seed0": factory.Spec(),
    "seed1-glm-kv4-rope500": factory.Spec(seed=1, layout="glm", shape=factory.Shape(n_head_kv=4, rope_ratio=500)),
    "seed2-f16-kv1-rope1e4": factory.Spec(seed=2, dtype="f16", shape=factory.Shape(n_head_kv=1, rope_ratio=10000)),
    "seed3-4layers": factory.Spec(seed=3, shape=factory.Shape(n_layer=4)),
}
if factory.REAL_TOKENIZER.is_file():
    CHECKPOINTS["seed0-glm4-vocab-3-shards"] = factory.Spec(real_tokenizer=True, shards=3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--types", nargs="*", default=list(OUT_TYPES), choices=list(OUT_TYPES))
    args = parser.parse_args()
    worst: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in CHECKPOINTS.items():
            folder = factory.build_checkpoint(Path(tmp) / label, spec)
            for name in args.types:
                kind = OUT_TYPES[name]
                out = Path(tmp) / f"{label}-{name}.gguf"
                convert(str(folder), kind, output=out)
                r = verify(out, str(folder))
                w = worst.setdefault(name, {"max_abs": 0.0, "top1": 1.0, "kl": 0.0})
                w["max_abs"] = max(w["max_abs"], r.max_abs_error)
                w["top1"] = min(w["top1"], r.top1_agreement)
                w["kl"] = max(w["kl"], r.mean_kl)
                out.unlink()
    print(f"{'type':8} {'max abs err':>12} {'top-1':>8} {'mean KL':>10}")
    for name, w in worst.items():
        print(f"{name:8} {w['max_abs']:12.4f} {w['top1']:8.4f} {w['kl']:10.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(worst, indent=2))


if __name__ == "__main__":
    main()

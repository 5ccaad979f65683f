"""What each quantized type costs, with and without an importance matrix, measured with `eval`.

    python benchmarks/quant_kl.py [--layers 8] [--out benchmarks/out/quant_kl.json]

Builds the largest GLM-4-shaped model these 2-core machines convert in minutes (GLM-4's own
151,552-token vocabulary when ../shared or tests/data has it, 1024 wide, random bf16 weights),
converts it to f16 (the reference) and to each quantized type, once plainly and once with
`--imatrix auto`, then runs `eval` of each against the f16 file on the built-in text.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import factory

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.gguf_tools.evaluate import evaluate

TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_s", "iq4_xs", "q3_k_m")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--types", nargs="*", default=list(TYPES), choices=list(OUT_TYPES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shape = factory.Shape(n_layer=args.layers, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=2816,
                          context=4096)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = factory.build_checkpoint(Path(tmp) / "ckpt", factory.Spec(shape=shape, real_tokenizer=True))
        reference = convert(str(folder), OUT_TYPES["f16"], output=Path(tmp) / "ref-f16.gguf").path
        print(f"model: {args.layers} layers x 1024, vocabulary 151552; f16 {reference.stat().st_size / 1e9:.2f} GB")
        for name in args.types:
            for imatrix in (None, "auto"):
                out = Path(tmp) / f"{name}-{imatrix or 'plain'}.gguf"
                started = time.perf_counter()
                convert(str(folder), OUT_TYPES[name], output=out, imatrix=imatrix if name != "q8_0" else None)
                seconds = time.perf_counter() - started
                r = evaluate(out, reference)
                rows.append({"type": name, "imatrix": bool(imatrix and name != "q8_0"), "mean_kl": r.mean_kl,
                             "top1": r.top1_agreement, "ppl_ratio": r.perplexity / r.reference_perplexity,
                             "bytes": out.stat().st_size, "seconds": round(seconds, 1), "tokens": r.tokens})
                print(json.dumps(rows[-1]), flush=True)
                out.unlink()
                out.with_suffix(".imatrix").unlink(missing_ok=True)
                if name == "q8_0":
                    break  # llama.cpp's q8_0 ignores an importance matrix
    print(f"\n{'type':8} {'imatrix':>8} {'mean KL':>10} {'top-1':>8} {'size MB':>8}")
    for row in rows:
        print(f"{row['type']:8} {'yes' if row['imatrix'] else 'no':>8} {row['mean_kl']:10.5f} {row['top1']:8.4f} "
              f"{row['bytes'] / 1e6:8.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

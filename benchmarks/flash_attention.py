"""Flash attention on against off, on the evidence: how far its next-token distributions move (KL, top-1
agreement) at several context lengths, measured against what q8_0 itself costs (q8_0 against f16 of the
same weights, attention off), and what it does to speed (prompt reading and decoding at a filled context).

A model with GLM-4's real 151,552-token vocabulary and GLM-4's attention shape per head (4 layers × 512,
8 heads, 2 KV heads of 64), built from random weights; the text is the built-in bilingual evaluation text,
repeated to fill the longest window; the last 128 positions of each context are compared.

    python benchmarks/flash_attention.py [--contexts 512,2048,8192] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import SMALL
from helpers import factory

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.convert.texts import eval_text
from glm4_local.core.llama import door
from glm4_local.gguf_tools.divergence import kl_per_position, log_softmax, top1_matches

CHUNK = 64  # positions compared at once (a row of logits is 0.6 MB)
TAIL = 128  # positions compared at the end of each context (all of 8,192 would be 5 GB of logits)


def last_logits(llm: Any) -> np.ndarray:
    """The logits of the last position evaluated (the one row a context without logits_all keeps)."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))


def logits_of(model: Path, tokens: list[int], flash: bool, threads: int) -> np.ndarray:
    """The logits of the last TAIL positions of `tokens`, the rest read as one prompt before them."""
    llm = door.load(model, n_ctx=len(tokens), n_batch=512, n_threads=threads, flash_attn=flash)
    try:
        llm.eval(tokens[:-TAIL])
        rows = []
        for token in tokens[-TAIL:]:
            llm.eval([token])
            rows.append(last_logits(llm).copy())
        return np.stack(rows)
    finally:
        llm.close()


def divergence(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(mean KL, max KL, top-1 agreement) of `logits` against `reference`, position by position."""
    kls, tops = [], []
    for start in range(0, len(logits) - 1, CHUNK):
        model, ref = logits[start : start + CHUNK], reference[start : start + CHUNK]
        kls.append(kl_per_position(log_softmax(ref), log_softmax(model)))
        tops.append(top1_matches(ref, model))
    kl = np.concatenate(kls)
    return float(kl.mean()), float(kl.max()), float(np.concatenate(tops).mean())


def speed(model: Path, prompt: list[int], flash: bool, threads: int, decode: int = 64) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s with `prompt` in the cache) of one llama.cpp context."""
    llm = door.load(model, n_ctx=len(prompt) + decode + 8, n_batch=512, n_threads=threads, flash_attn=flash)
    try:
        started = time.perf_counter()
        llm.eval(prompt)
        read = time.perf_counter() - started
        token = int(np.argmax(last_logits(llm)))
        started = time.perf_counter()
        for _ in range(decode):
            llm.eval([token])
            token = int(np.argmax(last_logits(llm)))
        return len(prompt) / read, decode / (time.perf_counter() - started)
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="512,2048,8192")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        factory.build_checkpoint(folder / "ckpt", factory.Spec(dtype="bf16", shape=SMALL, real_tokenizer=True))
        f16 = convert(str(folder / "ckpt"), OUT_TYPES["f16"], output=folder / "f16.gguf").path
        q8 = convert(str(folder / "ckpt"), OUT_TYPES["q8_0"], output=folder / "q8_0.gguf").path
        vocab = door.load(q8, vocab_only=True)
        text = door.tokenize(vocab, eval_text())
        print(f"model {SMALL.n_layer}x{SMALL.n_embd}, {args.threads} threads; KL in nats, mean / max; top-1 agreement")
        for ctx in contexts:
            tokens = (text * (ctx // len(text) + 1))[:ctx]
            off = logits_of(q8, tokens, False, args.threads)
            on = logits_of(q8, tokens, True, args.threads)
            f16_off = logits_of(f16, tokens, False, args.threads)
            fa = divergence(on, off)
            quant = divergence(off, f16_off)
            print(f"ctx {ctx:>5}: flash on vs off (q8_0): KL {fa[0]:.2e} / {fa[1]:.2e}, top-1 {fa[2]:.4f};  "
                  f"q8_0 vs f16 (off): KL {quant[0]:.2e} / {quant[1]:.2e}, top-1 {quant[2]:.4f}")
            read_off, decode_off = speed(q8, tokens[: ctx - 72], False, args.threads)
            read_on, decode_on = speed(q8, tokens[: ctx - 72], True, args.threads)
            print(f"           speed, on/off: prompt {read_on / read_off:.2f} ({read_on:.0f} vs {read_off:.0f} tok/s), "
                  f"decode {decode_on / decode_off:.2f} ({decode_on:.1f} vs {decode_off:.1f} tok/s)")


if __name__ == "__main__":
    main()

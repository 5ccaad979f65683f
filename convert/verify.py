"""`verify`: run a GGUF in llama.cpp and compare its logits with the numpy reference forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glm4_local import runtime
from glm4_local.gguf_file import summarize

from .pipeline import load_checkpoint
from .reference import ReferenceModel

PROMPTS = (
    "[gMASK]<sop><|user|>\nWhat is the capital of France? Answer in one word.<|assistant|>",
    "[gMASK]<sop><|user|>\n请用一句话介绍长城。<|assistant|>",
    "[gMASK]<sop><|system|>\nYou translate English to Chinese.<|user|>\nGood morning, 朋友!<|assistant|>",
)


@dataclass(frozen=True)
class Limits:
    """Worst acceptable agreement with the reference for one file type (measured; see README)."""

    max_abs_error: float
    min_top1: float
    max_mean_kl: float


# Worst case over tiny random checkpoints (benchmarks/quant_errors.py: four with a small vocabulary,
# one with GLM-4's own) with about 2x head-room.
# Logit errors scale with the logits' size, so max-abs is a coarse guard; KL and top-1 decide.
# 16-bit files keep top-1 at 0.99 rather than 1.0: a 9B model has near-ties that rounding may flip.
LIMITS: dict[str, Limits] = {
    "ALL_F32": Limits(1e-3, 1.0, 1e-8),
    "F16": Limits(0.05, 0.99, 1e-5),
    "BF16": Limits(0.3, 0.99, 3e-4),
    "Q8_0": Limits(1.0, 0.9, 3e-3),
    "Q6_K": Limits(2.5, 0.88, 0.025),
    "Q5_K_M": Limits(3.5, 0.75, 0.06),
    "Q5_1": Limits(4.5, 0.85, 0.05),
    "Q5_0": Limits(4.5, 0.85, 0.1),
    "Q4_K_M": Limits(7.5, 0.7, 0.25),
    "Q4_1": Limits(8.0, 0.7, 0.3),
    "Q4_0": Limits(9.5, 0.7, 0.3),
}


@dataclass(frozen=True)
class VerifyReport:
    file_type: str
    positions: int
    max_abs_error: float
    top1_agreement: float
    mean_kl: float
    limits: Limits

    @property
    def passed(self) -> bool:
        return (self.max_abs_error <= self.limits.max_abs_error and self.top1_agreement >= self.limits.min_top1
                and self.mean_kl <= self.limits.max_mean_kl)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """(max |logit difference|, top-1 agreement, mean KL(reference || candidate)) over positions."""
    max_abs = float(np.max(np.abs(reference - candidate)))
    top1 = float(np.mean(reference.argmax(-1) == candidate.argmax(-1)))
    log_p, log_q = _log_softmax(reference), _log_softmax(candidate)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
    return max_abs, top1, kl


def top1_disagreements(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> list[int]:
    """Positions where the candidate's top token is worse, by the reference, than the reference's
    own top token by more than `tolerance`: real disagreements, not near-ties broken by rounding."""
    picked = np.take_along_axis(reference, candidate.argmax(-1)[:, None], axis=-1)[:, 0]
    return [int(i) for i in np.where(reference.max(-1) - picked > tolerance)[0]]


def verify(gguf_path: Path, source: str, prompts: tuple[str, ...] = PROMPTS) -> VerifyReport:
    summary = summarize(gguf_path)
    checkpoint = load_checkpoint(source)
    reference = ReferenceModel(checkpoint.spec, checkpoint.tensors, checkpoint.plan)
    llm = runtime.load(gguf_path, n_ctx=512, logits_all=True, exact_cache=True)
    refs, cands = [], []
    for prompt in prompts:
        tokens = runtime.tokenize(llm, prompt, special=True)
        cands.append(runtime.all_logits(llm, tokens))
        refs.append(reference.logits(tokens))
    max_abs, top1, kl = compare(np.concatenate(refs), np.concatenate(cands))
    limits = LIMITS.get(summary.file_type, LIMITS["Q4_0"])
    return VerifyReport(summary.file_type, sum(len(r) for r in refs), max_abs, top1, kl, limits)

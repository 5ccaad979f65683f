"""`eval`: how far a quantized GGUF is from its 16-bit (or f32) parent, measured in llama.cpp.

Like llama.cpp's `llama-perplexity --kl-divergence`, in one command and with no logit files: both
models read the same text in non-overlapping windows of `ctx` tokens (no BOS); at every position
that has a next token we compare their next-token distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from glm4_local.convert.texts import eval_text
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.registry import require_family
from glm4_local.core.gguf.checks import check_model
from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.llama import door
from glm4_local.core.progress import Progress
from glm4_local.gguf_tools.divergence import kl_per_position, log_softmax, top1_matches

K = gguf.Keys
_CHUNK_POSITIONS = 64  # positions compared at once: bounds memory for a 151,552-token vocabulary
DELTA_P_PERCENTILES = (1, 5, 10, 50, 90, 95, 99)


@dataclass(frozen=True)
class EvalReport:
    tokens: int  # positions scored
    mean_kl: float
    max_kl: float
    top1_agreement: float
    perplexity: float
    reference_perplexity: float
    delta_p: dict[str, float]  # p(next token) under the model minus under the reference: mean, percentiles

    def as_json(self) -> dict[str, Any]:
        return {"mean_kl": self.mean_kl, "max_kl": self.max_kl, "top1_agreement": self.top1_agreement,
                "perplexity": self.perplexity, "reference_perplexity": self.reference_perplexity,
                "tokens": self.tokens, "delta_p": self.delta_p}


@dataclass
class _Scores:
    """Per-position numbers, gathered window by window."""

    kl: list[np.ndarray]
    top1: list[np.ndarray]
    nll: list[np.ndarray]
    ref_nll: list[np.ndarray]
    delta_p: list[np.ndarray]

    def add(self, model: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> None:
        log_q, log_p = log_softmax(model), log_softmax(reference)
        rows = np.arange(len(targets))
        self.kl.append(kl_per_position(log_p, log_q))
        self.top1.append(top1_matches(reference, model))
        self.nll.append(-log_q[rows, targets])
        self.ref_nll.append(-log_p[rows, targets])
        self.delta_p.append(np.exp(log_q[rows, targets]) - np.exp(log_p[rows, targets]))

    def report(self) -> EvalReport:
        kl, nll, ref_nll, dp = (np.concatenate(x) for x in (self.kl, self.nll, self.ref_nll, self.delta_p))
        spread = {f"p{q}": float(np.percentile(dp, q)) for q in DELTA_P_PERCENTILES}
        return EvalReport(
            tokens=len(kl), mean_kl=float(kl.mean()), max_kl=float(kl.max()),
            top1_agreement=float(np.concatenate(self.top1).mean()), perplexity=float(np.exp(nll.mean())),
            reference_perplexity=float(np.exp(ref_nll.mean())),
            delta_p={"mean": float(dp.mean()), "min": float(dp.min()), "max": float(dp.max()), **spread},
        )


def windows(tokens: list[int], ctx: int) -> list[list[int]]:
    """Non-overlapping windows of `ctx` tokens; a last, shorter one when it has a position to score."""
    return [tokens[i : i + ctx] for i in range(0, len(tokens), ctx) if len(tokens[i : i + ctx]) >= 2]


def _checked_pair(model: Path, reference: Path) -> tuple[GGUFHeader, GGUFHeader]:
    """Both headers, checked, and with the same vocabulary (else they cannot be compared)."""
    a, _ = check_model(model)
    b, _ = check_model(reference)
    if a.get(K.Tokenizer.LIST) != b.get(K.Tokenizer.LIST):
        raise Glm4LocalError(f"{model}: its vocabulary differs from {reference}'s; they cannot be compared")
    return a, b


def evaluate(model: Path, reference: Path, text: str | None = None, ctx: int = 512, threads: int | None = None,
             progress: Progress | None = None) -> EvalReport:
    """Compare `model` with `reference` on `text` (default: the built-in bilingual text)."""
    if ctx < 2:
        raise Glm4LocalError(f"a window of {ctx} tokens has nothing to score (at least 2)")
    model_header, reference_header = _checked_pair(model, reference)
    family = require_family(model_header.get(K.General.ARCHITECTURE), str(model))
    trained = family.hyperparams(model_header, str(model)).context_length
    if ctx > trained:  # llama.cpp would allocate it all (logits for every position): gigabytes for nothing
        raise Glm4LocalError(f"a window of {ctx:,} tokens is more than the {trained:,} {model.name} was trained for")
    sink = progress or Progress()
    ref_llm = door.load(reference, header=reference_header, n_ctx=ctx, logits_all=True, n_threads=threads)
    model_llm = door.load(model, header=model_header, n_ctx=ctx, logits_all=True, n_threads=threads)
    tokens = door.tokenize(ref_llm, text if text is not None else eval_text())
    chunks = windows(tokens, ctx)
    if not chunks:
        raise Glm4LocalError("the text is too short to evaluate (it needs at least 2 tokens)")
    scores = _Scores([], [], [], [], [])
    sink.start("Evaluating", sum(len(w) - 1 for w in chunks), 0)
    for window in chunks:
        reference_logits = door.all_logits(ref_llm, window)
        model_logits = door.all_logits(model_llm, window)
        for start in range(0, len(window) - 1, _CHUNK_POSITIONS):
            end = min(start + _CHUNK_POSITIONS, len(window) - 1)
            targets = np.asarray(window[start + 1 : end + 1])
            scores.add(model_logits[start:end], reference_logits[start:end], targets)
            sink.advance(end - start)
    return scores.report()

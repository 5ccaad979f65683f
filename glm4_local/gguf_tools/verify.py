"""`verify`: run a GGUF in llama.cpp and compare its logits with the numpy reference forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from glm4_local.convert.outtypes import Limits, out_type_for_file_type
from glm4_local.convert.pipeline import load_checkpoint
from glm4_local.convert.reference import ReferenceModel
from glm4_local.core.gguf.checks import check_model
from glm4_local.core.llama import door
from glm4_local.gguf_tools.divergence import kl_per_position, log_softmax, top1_matches


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


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """(max |logit difference|, top-1 agreement, mean KL(reference || candidate)) over positions."""
    max_abs = float(np.max(np.abs(reference - candidate)))
    top1 = float(np.mean(top1_matches(reference, candidate)))
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    kl = float(np.mean(kl_per_position(log_p, log_q)))
    return max_abs, top1, kl


def top1_disagreements(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> list[int]:
    """Positions where the candidate's top token is worse, by the reference, than the reference's
    own top token by more than `tolerance`: real disagreements, not near-ties broken by rounding."""
    picked = np.take_along_axis(reference, candidate.argmax(-1)[:, None], axis=-1)[:, 0]
    return [int(i) for i in np.where(reference.max(-1) - picked > tolerance)[0]]


def verify(gguf_path: Path, source: str, prompts: tuple[str, ...] | None = None) -> VerifyReport:
    """Run the family's probe prompts (or `prompts`) through both; limits by the file's type."""
    header, _ = check_model(gguf_path)
    kind = out_type_for_file_type(header.get(gguf.Keys.General.FILE_TYPE))
    checkpoint = load_checkpoint(source)
    reference = ReferenceModel(checkpoint.family, checkpoint.spec, checkpoint.tensors, checkpoint.plan)
    llm = door.load(gguf_path, header=header, n_ctx=512, logits_all=True, exact_cache=True)
    refs, cands = [], []
    for prompt in prompts or checkpoint.family.probe_prompts:
        tokens = door.tokenize(llm, prompt, special=True)
        cands.append(door.all_logits(llm, tokens))
        refs.append(reference.logits(tokens))
    max_abs, top1, kl = compare(np.concatenate(refs), np.concatenate(cands))
    return VerifyReport(kind.label, sum(len(r) for r in refs), max_abs, top1, kl, kind.limits)

"""The output types a user can ask for, how each is produced, and how close each must stay (table-driven)."""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from glm4_local.core.errors import Glm4LocalError

Q = gguf.GGMLQuantizationType
F = gguf.LlamaFileType


@dataclass(frozen=True)
class Limits:
    """Worst acceptable agreement with the reference forward pass for one type (`verify`)."""

    max_abs_error: float
    min_top1: float
    max_mean_kl: float


@dataclass(frozen=True)
class OutType:
    """`direct` types are written by us; the others by llama.cpp's quantizer from a 16-bit GGUF."""

    name: str
    file_type: gguf.LlamaFileType
    tensor_type: gguf.GGMLQuantizationType | None  # for direct types: the type of 2-D weights
    limits: Limits

    @property
    def direct(self) -> bool:
        return self.tensor_type is not None

    @property
    def label(self) -> str:
        """The upper-case tag used in default file names, e.g. Q4_K_M."""
        return self.name.upper()


# Limits: the worst case over tiny random checkpoints (benchmarks/quant_errors.py: four with a small
# vocabulary, one with GLM-4's own) with about 2x head-room. Logit errors scale with the logits'
# size, so max-abs is a coarse guard; KL and top-1 decide. 16-bit files keep top-1 at 0.99 rather
# than 1.0: a 9B model has near-ties that rounding may flip.
OUT_TYPES: dict[str, OutType] = {
    t.name: t
    for t in (
        OutType("f32", F.ALL_F32, Q.F32, Limits(1e-3, 1.0, 1e-8)),
        OutType("f16", F.MOSTLY_F16, Q.F16, Limits(0.05, 0.99, 1e-5)),
        OutType("bf16", F.MOSTLY_BF16, Q.BF16, Limits(0.3, 0.99, 3e-4)),
        OutType("q8_0", F.MOSTLY_Q8_0, Q.Q8_0, Limits(1.0, 0.9, 3e-3)),
        OutType("q4_0", F.MOSTLY_Q4_0, None, Limits(9.5, 0.7, 0.3)),
        OutType("q4_1", F.MOSTLY_Q4_1, None, Limits(8.0, 0.7, 0.3)),
        OutType("q5_0", F.MOSTLY_Q5_0, None, Limits(4.5, 0.85, 0.1)),
        OutType("q5_1", F.MOSTLY_Q5_1, None, Limits(4.5, 0.85, 0.05)),
        OutType("q4_k_m", F.MOSTLY_Q4_K_M, None, Limits(7.5, 0.7, 0.25)),
        OutType("q5_k_m", F.MOSTLY_Q5_K_M, None, Limits(3.5, 0.75, 0.06)),
        OutType("q6_k", F.MOSTLY_Q6_K, None, Limits(2.5, 0.88, 0.025)),
        OutType("q4_k_s", F.MOSTLY_Q4_K_S, None, Limits(7.5, 0.7, 0.25)),
        OutType("q3_k_m", F.MOSTLY_Q3_K_M, None, Limits(17.0, 0.5, 1.2)),
        OutType("iq4_xs", F.MOSTLY_IQ4_XS, None, Limits(8.0, 0.65, 0.35)),
    )
}
DEFAULT_OUT_TYPE = OUT_TYPES["q4_k_m"]


def out_type(name: str) -> OutType:
    try:
        return OUT_TYPES[name.lower()]
    except KeyError:
        raise Glm4LocalError(f"unknown output type {name!r}; choose one of {', '.join(OUT_TYPES)}") from None


def out_type_for_file_type(file_type: int | None) -> OutType:
    """The type a GGUF's general.file_type says it is; the loosest (q4_0) for a type not listed."""
    return next((t for t in OUT_TYPES.values() if t.file_type == file_type), OUT_TYPES["q4_0"])

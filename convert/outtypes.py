"""The output types a user can ask for, and how each is produced (table-driven)."""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from glm4_local.errors import Glm4LocalError

Q = gguf.GGMLQuantizationType
F = gguf.LlamaFileType


@dataclass(frozen=True)
class OutType:
    """`direct` types are written by us; the others by llama.cpp's quantizer from a 16-bit GGUF."""

    name: str
    file_type: gguf.LlamaFileType
    tensor_type: gguf.GGMLQuantizationType | None  # for direct types: the type of 2-D weights

    @property
    def direct(self) -> bool:
        return self.tensor_type is not None

    @property
    def label(self) -> str:
        """The upper-case tag used in default file names, e.g. Q4_K_M."""
        return self.name.upper()


OUT_TYPES: dict[str, OutType] = {
    t.name: t
    for t in (
        OutType("f32", F.ALL_F32, Q.F32),
        OutType("f16", F.MOSTLY_F16, Q.F16),
        OutType("bf16", F.MOSTLY_BF16, Q.BF16),
        OutType("q8_0", F.MOSTLY_Q8_0, Q.Q8_0),
        OutType("q4_0", F.MOSTLY_Q4_0, None),
        OutType("q4_1", F.MOSTLY_Q4_1, None),
        OutType("q5_0", F.MOSTLY_Q5_0, None),
        OutType("q5_1", F.MOSTLY_Q5_1, None),
        OutType("q4_k_m", F.MOSTLY_Q4_K_M, None),
        OutType("q5_k_m", F.MOSTLY_Q5_K_M, None),
        OutType("q6_k", F.MOSTLY_Q6_K, None),
    )
}
DEFAULT_OUT_TYPE = "q4_k_m"


def out_type(name: str) -> OutType:
    try:
        return OUT_TYPES[name.lower()]
    except KeyError:
        raise Glm4LocalError(f"unknown output type {name!r}; choose one of {', '.join(OUT_TYPES)}") from None

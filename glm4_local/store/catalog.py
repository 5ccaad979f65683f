"""The short names `pull` knows: which Hub repository holds each model's GGUFs, and how its files are named.

A tag is `NAME[:QUANT]`. The sizes are what the first run quotes before asking (nothing is fetched
until the user agrees); the Hub's own size is what the download checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogModel:
    name: str
    repo: str  # a Hub repository of GGUF files
    file_pattern: str  # the file for a quantization: pattern.format(quant=...), quant as the repo spells it
    default_quant: str
    sizes_gb: dict[str, float] = field(default_factory=dict)  # approximate, for the first-run question

    def file_for(self, quant: str) -> str:
        return self.file_pattern.format(quant=quant.upper())

    def stored_name(self, quant: str) -> str:
        return f"{self.name}-{quant.upper()}.gguf"


# second-state's files are the llama.cpp converter's output at every common quantization (repaired on pull)
CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel(
        name="glm-4-9b-chat", repo="second-state/glm-4-9b-chat-GGUF", file_pattern="glm-4-9b-chat-{quant}.gguf",
        default_quant="Q4_K_M",
        sizes_gb={"Q2_K": 3.99, "Q3_K_S": 4.59, "Q3_K_M": 5.06, "Q3_K_L": 5.28, "Q4_0": 5.46, "Q4_K_S": 5.75,
                  "Q4_K_M": 6.25, "Q5_0": 6.55, "Q5_K_S": 6.69, "Q5_K_M": 7.14, "Q6_K": 8.26, "Q8_0": 9.99,
                  "F16": 18.8},
    ),
)
DEFAULT_MODEL = CATALOG[0]


def catalog_model(name: str) -> CatalogModel | None:
    wanted = name.lower()
    return next((m for m in CATALOG if m.name == wanted), None)

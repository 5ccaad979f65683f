"""An embedding model beside the chat model (`serve --embedding-model`): any GGUF llama.cpp runs with a pooling
layer (BERT-family multilingual models such as bge-m3 or multilingual-e5). Texts are embedded together,
as many to a llama_decode as its batch holds, each vector L2-normalised (as OpenAI's are).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from glm4_local.core.errors import GGUFFileError, Glm4LocalError
from glm4_local.core.gguf.header import GGUFHeader, read_gguf_header
from glm4_local.core.llama import door

MAX_EMBEDDING_CTX = 8192  # tokens one text may have (a model trained on more still gets this many)


class NotAnEmbeddingModel(Glm4LocalError):
    """The GGUF has no pooling layer: it makes tokens, not embeddings."""


class EmbeddingInputError(Glm4LocalError):
    """One of the texts cannot be embedded (too long, empty); `index` says which."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    tokens: int  # read in all, as usage counts them


def embedding_header(path: Path) -> tuple[GGUFHeader, str]:
    """The GGUF's header and architecture, if it is an embedding model (NotAnEmbeddingModel if not;
    GGUFFileError if it is no GGUF)."""
    try:
        header = read_gguf_header(path)
    except (OSError, ValueError) as e:
        raise GGUFFileError(f"{path}: not a GGUF file llama.cpp could load ({e})") from None
    arch = str(header.get(gguf.Keys.General.ARCHITECTURE, "?"))
    if not header.get(gguf.Keys.LLM.POOLING_TYPE.format(arch=arch)):  # absent or NONE: per-token states
        raise NotAnEmbeddingModel(f"{path.name} is not an embedding model (a {arch} model that pools nothing); "
                                  "--embedding-model needs an embedding GGUF, e.g. bge-m3 or multilingual-e5")
    return header, arch


class Embedder:
    """One embedding model; embed() may be called from any thread (one runs at a time)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        header, arch = embedding_header(path)
        trained = header.get(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)) or 512
        self.n_ctx = min(int(trained), MAX_EMBEDDING_CTX)
        self.name = path.stem
        # non-causal models read a whole text in one micro-batch: the batch is the context
        self._llm: Any = door.load(path, header=header, n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=self.n_ctx,
                                   n_threads=threads, embedding=True)
        self.dimensions = int(self._llm.n_embd())
        self._lock = threading.Lock()

    def embed(self, texts: list[str], truncate: bool = False) -> Embedded:
        """Each text's vector, in order; EmbeddingInputError for an empty one, or a too long one unless
        `truncate` (then its first tokens are embedded, as Ollama does by default)."""
        counted = 0
        for index, text in enumerate(texts):
            if not text:
                raise EmbeddingInputError("an empty text has no embedding", index)
            tokens = len(self._llm.tokenize(text.encode("utf-8")))  # with the marks the model adds ([CLS], [SEP])
            if tokens > self.n_ctx and not truncate:
                raise EmbeddingInputError(f"{tokens:,} tokens; the embedding model reads at most {self.n_ctx:,} at "
                                          "once (split the text)", index)
            counted += min(tokens, self.n_ctx)
        with self._lock:
            vectors = self._llm.embed(texts, normalize=True, truncate=truncate)
        return Embedded([list(map(float, v)) for v in vectors], counted)

    def close(self) -> None:
        self._llm.close()

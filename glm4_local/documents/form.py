"""Files in the user's message as GLM-4 reads them, byte for byte as THUDM's composite demo writes them
(../shared/glm4-reference/ALL_TOOLS.md): each file `[File Name]\\n{name}\\n[File Content]\\n{text}`,
files joined by a blank line, then `\\n\\n\\n{n} files uploaded.\\n` and the user's question."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FILE_TEMPLATE = "[File Name]\n{file_name}\n[File Content]\n{file_content}"


@dataclass(frozen=True)
class Document:
    name: str  # the file's name, as the model is told it
    text: str
    kind: str  # which reader read it ("text", "pdf", ...)
    pages: int | None = None


def with_documents(documents: Sequence[Document], question: str) -> str:
    """The user message that hands the model `documents` and then asks `question`."""
    if not documents:
        return question
    files = "\n\n".join(FILE_TEMPLATE.format(file_name=d.name, file_content=d.text) for d in documents)
    return f"{files}\n\n\n{len(documents)} files uploaded.\n{question.strip()}"

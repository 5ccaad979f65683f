"""Files in the user's message as GLM-4 reads them, byte for byte as THUDM's composite demo writes them
(../shared/glm4-reference/ALL_TOOLS.md): each file `[File Name]\\n{name}\\n[File Content]\\n{text}`,
files joined by a blank line, then `\\n\\n\\n{n} files uploaded.\\n` and the user's question."""

from __future__ import annotations

import re
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


_UPLOADED = re.compile(r"\n\n\n(\d+) files uploaded\.\n")


def documents_in(message: str) -> tuple[list[tuple[str, int]], str] | None:
    """For showing a message: each document's name and length in characters, and the question after
    them; None when the message holds no documents in the form above."""
    found = list(_UPLOADED.finditer(message))
    head_mark = FILE_TEMPLATE.split("{file_name}")[0]
    if not found or not message.startswith(head_mark):
        return None
    last = found[-1]
    files = message[len(head_mark):last.start()].split("\n\n" + head_mark)
    content_mark = FILE_TEMPLATE.split("{file_name}")[1].split("{file_content}")[0]
    documents = []
    for part in files:
        name, _, text = part.partition(content_mark)
        documents.append((name, len(text)))
    return documents, message[last.end():]


def shown(message: str) -> str:
    """A user message as the terminal shows it: documents as their names and sizes, not their text."""
    parsed = documents_in(message)
    if parsed is None:
        return message
    documents, question = parsed
    names = ", ".join(f"[{name}, {length:,} characters]" for name, length in documents)
    return f"{names} {question}"

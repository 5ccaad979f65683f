"""What GLM-4 reads and writes around its replies, as THUDM's composite demo has it
(../shared/glm4-reference/ALL_TOOLS.md): the form that hands it files in a user message, and the
citations its browser teaches it to write in an answer. Only the family spells them; the terminal,
the server and the page ask it (the page through GET /v1/glm4/tools)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# each file `[File Name]\n{name}\n[File Content]\n{text}`, files joined by a blank line, then
# `\n\n\n{n} files uploaded.\n` and the user's question
FILE_TEMPLATE = "[File Name]\n{file_name}\n[File Content]\n{file_content}"
# a citation in an answer: 【{id}†{text}】, id a search result or a quote the browser gave; the pattern
# reads the same in Python and in JavaScript (the page renders citations with it)
CITATION = r"【([^†】\n]{1,20})†([^】\n]{0,200})】"


def with_documents(documents: Sequence[Mapping[str, str]], question: str) -> str:
    """The user message that hands the model `documents` ({"name", "text"} each) and then asks `question`."""
    if not documents:
        return question
    files = "\n\n".join(FILE_TEMPLATE.format(file_name=d["name"], file_content=d["text"]) for d in documents)
    return f"{files}\n\n\n{len(documents)} files uploaded.\n{question.strip()}"

"""A document as a reader gives it: its name, its text, and what read it.

In a conversation documents travel as data, on the user message they go with
(`{"role": "user", "content": QUESTION, "documents": [{"name": ..., "text": ...}]}`); the model's
family writes them into the prompt in the form it was trained on (core/families/glm4_forms.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    name: str  # the file's name, as the model is told it
    text: str
    kind: str  # which reader read it ("text", "pdf", ...)
    pages: int | None = None

    def as_data(self) -> dict[str, str]:
        """The document as a user message carries it."""
        return {"name": self.name, "text": self.text}


def shown(message: dict[str, object]) -> str:
    """A user message as the terminal shows it: its documents as their names and sizes, not their text."""
    documents = message.get("documents") or []
    assert isinstance(documents, list)
    names = "".join(f"[{d['name']}, {len(d['text']):,} characters] " for d in documents)
    return f"{names}{message.get('content') or ''}"

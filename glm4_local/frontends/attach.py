"""Files for the next user message (`chat --file`, `/file`): read, counted against the context in the
form the model's family gives them, and sent with the message as data. One that does not fit is refused
with what it would need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from glm4_local.chat.engine import ChatEngine
from glm4_local.documents.form import Document
from glm4_local.documents.readers import DocumentError, read_document
from glm4_local.frontends.model_plan import size_text


def _tokens(engine: ChatEngine, documents: list[Document]) -> int:
    form = engine.runtime.vocab.family.replies.with_documents([d.as_data() for d in documents], "")
    return len(engine.runtime.vocab.text_tokens(form))


@dataclass
class Attachments:
    """Documents waiting for the next user message."""

    documents: list[Document] = field(default_factory=list)

    def add(self, engine: ChatEngine, path: Path) -> str:
        """Read and attach a file; the line that says its size and that it fits. DocumentError when it
        cannot be read or does not fit (nothing is attached then)."""
        document = read_document(path.expanduser())
        total = _tokens(engine, [*self.documents, document])
        tokens = total - (_tokens(engine, self.documents) if self.documents else 0)
        room = engine.room()
        n_ctx = engine.runtime.n_ctx
        pages = f", {document.pages} pages" if document.pages else ""
        if total > room:
            need, trained = n_ctx + total - room, engine.runtime.trained_ctx
            too_long = f"{document.name} is {tokens:,} tokens{pages}, more than the {room:,} the {n_ctx:,}-token " \
                       "context has free"
            if need > trained:  # no --ctx can help: say so rather than suggest one that is capped
                raise DocumentError(f"{too_long}; with this conversation it needs {need:,} tokens of context, more "
                                    f"than the {trained:,} this model was trained for: shorten it, or use a model "
                                    "with a longer context")
            kv = size_text(int(need * engine.runtime.kv_bytes_per_token))
            raise DocumentError(f"{too_long}; it needs --ctx {min(_rounded(need), trained)} or more (a KV cache of "
                                f"{kv} for that context)")
        self.documents.append(document)
        return (f"{document.name}: {tokens:,} tokens ({document.kind}{pages}); fits, {room - total:,} of the "
                f"{n_ctx:,}-token context left; it goes with your next message")

    def taken(self) -> list[dict[str, str]]:
        """The attached documents, for the next user message; the attachments are used up."""
        documents = [d.as_data() for d in self.documents]
        self.documents = []
        return documents


def _rounded(tokens: int) -> int:
    return -(-tokens // 1024) * 1024

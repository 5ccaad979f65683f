"""Log-probabilities in the shapes clients read: Chat Completions' and the Responses API's entries (token,
logprob, bytes, top_logprobs) and the legacy Completions object (tokens, token_logprobs, top_logprobs,
text_offset) that lm-evaluation-harness scores multiple choice with.

A token is named by its text with markup as written ("<|user|>"); a token holding part of a UTF-8
character is named by its bytes escaped ("\\xe4\\xbd"), so that no two tokens share a name (a client that
compares names, as lm-eval does, must not see two different tokens as the same), and `bytes` is exact.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from glm4_local.chat.runtime import Vocabulary
from glm4_local.core.llama.logprobs import TokenLogprob


class TokenNames:
    """Each token's name and bytes, as log-probabilities show them (the vocabulary's markup pieces)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.piece = vocab.marked_piece

    def name(self, token: int) -> str:
        return self.piece(token).decode("utf-8", errors="backslashreplace")

    # -- Chat Completions and Responses --------------------------------------------------------------
    def entry(self, scored: TokenLogprob) -> dict[str, Any]:
        alternatives = [self._alternative(token, logprob) for token, logprob in scored.top]
        return self._alternative(scored.token, scored.logprob) | {"top_logprobs": alternatives}

    def _alternative(self, token: int, logprob: float) -> dict[str, Any]:
        return {"token": self.name(token), "logprob": logprob, "bytes": list(self.piece(token))}

    def entries(self, scored: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
        return [self.entry(s) for s in scored]

    # -- legacy Completions ----------------------------------------------------------------------------
    def legacy(self, scored: Sequence[TokenLogprob | None], tokens: Sequence[int], offset: int = 0) -> dict[str, Any]:
        """`tokens` with their scores (None: the prompt's first token, which nothing predicts); `offset`:
        where the first token's text starts in the choice's text."""
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        offsets = []
        for token in tokens:  # in characters of the text, as the text shows a character split across tokens
            offsets.append(offset)
            offset += len(decode(self.piece(token)))
        return {"tokens": [self.name(t) for t in tokens],
                "token_logprobs": [None if s is None else s.logprob for s in scored],
                "top_logprobs": [None if s is None else {self.name(t): lp for t, lp in s.top} for s in scored],
                "text_offset": offsets}

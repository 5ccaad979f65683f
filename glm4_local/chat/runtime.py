"""A loaded model in a conversation: prompt pieces to tokens, KV-cache reuse, streamed generation."""

from __future__ import annotations

import codecs
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glm4_local.chat.template import ChatTemplate, Piece, merged_text
from glm4_local.core.errors import GGUFFileError, Glm4LocalError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.llama.decoder import DecodeAborted, Job
from glm4_local.core.llama.door import token_piece, tokenize
from glm4_local.core.llama.jobs import Decoding
from glm4_local.core.llama.sampling import SamplerSettings


@dataclass
class Timings:
    prompt_tokens: int = 0  # the whole prompt
    evaluated_tokens: int = 0  # what had to be computed: prompt minus the reused cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    drafted_tokens: int = 0  # speculation: tokens proposed by prompt lookup, and of those, accepted
    accepted_tokens: int = 0

    @property
    def prefill_tps(self) -> float:
        return self.evaluated_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.generated_tokens - 1) / self.decode_seconds if self.decode_seconds else 0.0


@dataclass
class Generation:
    """A reply being generated: iterate for text chunks; `stopped_by` and `timings` fill in as it runs."""

    chunks: Iterator[str]
    timings: Timings = field(default_factory=Timings)
    # a stop token's text; "max_tokens" (the reply's limit) or "context" (no room left); None while running
    stopped_by: str | None = None
    on_progress: Callable[[int, int], None] | None = None  # (prompt tokens read, to read) after each batch


# Text longer than this is first counted in chunks of it when the prompt has a limit, so that a request
# of megabytes is refused after reading what exceeds the context, not after tokenizing all of it.
COUNT_CHUNK_CHARS = 64 * 1024


class PromptTooLong(Glm4LocalError):
    """More prompt tokens than the context holds (`at_least`: counted when it stopped)."""

    def __init__(self, at_least: int, limit: int) -> None:
        super().__init__(f"this prompt is {'at least ' if at_least > limit else ''}{at_least:,} tokens; the context "
                         f"holds {limit:,}")
        self.at_least, self.limit = at_least, limit


def _chunks(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of about `size` characters, cut before a space or newline where there is one
    (where GLM-4's pre-tokenizer splits too, so the pieces tokenize as the whole does)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = cut if cut > start else end
        yield text[start:end]
        start = end


class Vocabulary:
    """A model's tokens as a family's prompts use them: markup to special tokens, stops, token text."""

    def __init__(self, model: Any, family: ModelFamily) -> None:
        self.model = model  # a llama-cpp-python model (or Llama): tokenize / detokenize
        self.family = family
        self.special_ids = {t: self._special_id(t) for t in dict.fromkeys((*family.stop_tokens,
                                                                           *family.markup_tokens))}
        self.stop_ids = {self.special_ids[t]: t for t in family.stop_tokens}
        self._pieces: dict[int, bytes] = {}  # token -> its bytes; a dict lookup beats a ctypes call per token
        self._marked: dict[int, bytes] = {}  # token -> its bytes with markup written out

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            # control tokens other than the stops (e.g. [sMASK]) are not text: they render as nothing
            piece = self._pieces[token] = token_piece(self.model, token)
        return piece

    def text_of(self, tokens: Sequence[int]) -> str:
        """The text of whole tokens (a character cut off at the end is dropped)."""
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="ignore")

    def marked_piece(self, token: int) -> bytes:
        """A token's bytes with markup written out (`<|user|>`, not nothing)."""
        piece = self._marked.get(token)
        if piece is None:
            piece = self._marked[token] = token_piece(self.model, token, special=True)
        return piece

    def marked_text(self, tokens: Sequence[int]) -> str:
        """The text of tokens with their markup written out (what tokenizing it with markup reads back)."""
        return b"".join(self.marked_piece(t) for t in tokens).decode("utf-8", errors="replace")

    def detokenizer(self) -> Callable[[int], str]:
        """Token → text for one reply: a character split across tokens comes out whole once complete
        (bytes of one cut off at the end are dropped, never shown as U+FFFD)."""
        decode, piece = codecs.getincrementaldecoder("utf-8")(errors="replace").decode, self.piece
        return lambda token: decode(piece(token))

    def _special_id(self, text: str) -> int:
        ids = tokenize(self.model, text, special=True)
        if len(ids) != 1:
            raise GGUFFileError(f"model vocabulary has no special token {text}")
        return ids[0]

    def prompt(self, template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
               tools: Sequence[Mapping[str, Any]] | None, limit: int | None = None) -> list[int]:
        """The tokens of OpenAI-style messages (and tools) as the model's template renders them, ready
        for the assistant's reply: the one prompt path of chat, render and serve. PromptTooLong past `limit`."""
        return self.tokens(template.pieces(self.family.replies.template_messages(messages, tools)), limit)

    def tokens(self, pieces: Sequence[Piece], limit: int | None = None) -> list[int]:
        """Markup pieces become their special token; text between them is tokenized as plain text."""
        ids: list[int] = []
        for piece in merged_text(pieces):
            if piece.special:
                if piece.text not in self.special_ids:
                    self.special_ids[piece.text] = self._special_id(piece.text)
                ids.append(self.special_ids[piece.text])
            else:
                ids.extend(self.text_tokens(piece.text, None if limit is None else limit - len(ids)))
            if limit is not None and len(ids) > limit:
                raise PromptTooLong(len(ids), limit)
        return ids

    def text_tokens(self, text: str, room: int | None = None, special: bool = False) -> list[int]:
        """`text`'s tokens; PromptTooLong, after counting only as far as needed, when they exceed `room`."""
        if room is not None and len(text) > COUNT_CHUNK_CHARS:
            counted = 0
            for chunk in _chunks(text, COUNT_CHUNK_CHARS):
                counted += max(0, len(tokenize(self.model, chunk, special)) - 1)  # a cut may cost a token
                if counted > room:
                    raise PromptTooLong(counted, room)
        return tokenize(self.model, text, special)


class ChatRuntime:
    """One loaded model (its vocabulary) and its decoder; each slot keeps its KV cache across turns, so a
    turn evaluates only its new tokens. The chat steps the decoder itself; the server steps it from a
    worker thread."""

    def __init__(self, vocab: Vocabulary, decoder: Decoding, kv_bytes_per_token: float = 0.0,
                 trained_ctx: int | None = None) -> None:
        self.vocab = vocab
        self.decoder = decoder
        self.kv_bytes_per_token = kv_bytes_per_token  # what a token of context costs in the KV cache
        self.trained_ctx = trained_ctx or decoder.slot_ctx  # the most context --ctx can give this model

    @property
    def n_ctx(self) -> int:
        """Tokens of context one conversation (one slot) has."""
        return self.decoder.slot_ctx

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Around a wait for the user (the chat's prompt): meanwhile the decoder measures what its steps cost
        (Decoder.calibrate) in a thread of its own, stopped, and its step under way with it, before the block ends."""
        decoder = self.decoder
        decoder.hold_calibration(False)
        worker = threading.Thread(target=_calibrate_all, args=(decoder,), name="measuring-steps", daemon=True)
        worker.start()
        try:
            yield
        finally:
            decoder.hold_calibration(True)
            worker.join()

    def generate(self, prompt: Sequence[int], sampling: SamplerSettings, max_tokens: int | None) -> Generation:
        """Stream a reply, stepping the decoder in this thread (the chat's way)."""
        if len(prompt) >= self.n_ctx:
            raise Glm4LocalError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        budget = self.n_ctx - len(prompt)
        cut = "max_tokens" if max_tokens and max_tokens <= budget else "context"
        job = Job(list(prompt), sampling, max_tokens or 0, frozenset(self.vocab.stop_ids))
        generation = Generation(iter(()))
        generation.chunks = self._stream(job, generation, cut)
        return generation

    def _stream(self, job: Job, gen: Generation, cut: str) -> Iterator[str]:
        text_of, decoder, generated = self.vocab.detokenizer(), self.decoder, job.generated
        decoder.submit(job)
        shown = 0
        try:
            while not job.done:
                if decoder.prepare():  # a prompt batch: seconds; Ctrl-C must stop it inside llama.cpp
                    _step_interruptibly(decoder)
                    if gen.on_progress and not job.done:
                        gen.on_progress(job.prompt_done, job.evaluated_tokens)
                else:
                    decoder.step()
                while shown < len(generated):
                    text = text_of(generated[shown])
                    shown += 1
                    if text:
                        yield text
        finally:
            if not job.done:
                decoder.cancel(job)
                decoder.release_cancelled()
            _record_timings(job, gen, cut, self.vocab.stop_ids)


def _calibrate_all(decoder: Decoding) -> None:
    with contextlib.suppress(Exception):  # an optimisation: sizes not measured are learnt from the replies' steps
        while decoder.calibrate():
            pass


def _step_interruptibly(decoder: Decoding) -> None:
    """decoder.step() in a helper thread while this one waits, so Ctrl-C (which Python delivers only to
    the main thread, and only between its own instructions) arrives at once and aborts the batch."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            decoder.step(abortable=True)
        except BaseException as e:  # handed to the waiting thread, which raises it
            failure.append(e)

    worker = threading.Thread(target=run, name="prompt-batch")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        decoder.request_abort()
        worker.join()
        raise
    if failure and not isinstance(failure[0], DecodeAborted):
        raise failure[0]


def _record_timings(job: Job, gen: Generation, cut: str, stop_ids: dict[int, str]) -> None:
    if job.error:
        raise Glm4LocalError(job.error)
    t = gen.timings
    t.prompt_tokens, t.evaluated_tokens = len(job.prompt), job.evaluated_tokens
    t.generated_tokens = len(job.generated) + (job.stop_token is not None)
    t.drafted_tokens, t.accepted_tokens = job.drafted, job.accepted
    if job.first_token_at:
        t.prefill_seconds = job.first_token_at - job.started_at
        t.decode_seconds = job.last_token_at - job.first_token_at
    if job.stop_token is not None:
        gen.stopped_by = stop_ids[job.stop_token]
    elif job.finish == "length":
        gen.stopped_by = cut

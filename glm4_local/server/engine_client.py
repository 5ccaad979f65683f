"""One llama.cpp `llama-server` as a decoding engine: what it is, whether it runs this model's vocabulary,
and one job's generation on it (token ids in, token ids out, over its native `/completion` stream).

The front keeps everything that is ours (template, tokenizer, reply parsing, grammars, tools); an engine only
continues token ids, sampled as our decoder would sample them (the same chain, in the same order, nothing of
llama-server's own defaults left on).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from glm4_local.chat.runtime import Vocabulary
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.llama.jobs import Job
from glm4_local.core.llama.sampling import PENALTY_WINDOW, SamplerSettings
from glm4_local.server import engine_http

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"
SAMPLERS = ["penalties", "top_k", "top_p", "min_p", "temperature"]  # our decoder's chain, in its order
PING_SECONDS = 5  # the engine writes a comment this often while a stream is silent (after its first token)
CHECK_CHUNK = 8192  # token ids per /tokenize call when comparing vocabularies
SPLIT_BYTES = 256  # text left out of a stream longer than this is not searched for its exact tokens (the search
# grows with the square of it; a character cut across tokens is at most 4 bytes, a run of them rarely 20)
CONNECT_SECONDS = 5.0
REQUEST_SECONDS = 30.0  # for the short calls (/props, /tokenize); a stream has no overall limit
HEALTH_SECONDS = 10.0  # an engine that takes longer to answer /health is not answering


class EngineError(Glm4LocalError):
    """An engine failed: unreachable, not ready, cut off, or it answered what no llama-server answers.

    `started`: tokens of the job had already come (so the job cannot be sent to another engine)."""

    def __init__(self, message: str, started: bool = False) -> None:
        super().__init__(message)
        self.started = started


class EngineRefused(Glm4LocalError):
    """The engine refused the request itself (4xx): another engine would refuse it too."""


class EngineMismatch(Glm4LocalError):
    """The engine runs another model (its vocabulary differs from this GGUF's)."""


@dataclass(frozen=True)
class EngineFacts:
    """What an engine says of itself."""

    slots: int
    slot_ctx: int  # tokens of context each slot has
    n_vocab: int


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def http_client(api_key: str | None) -> httpx.AsyncClient:
    """For the short calls (a stream goes through engine_http)."""
    headers = auth_headers(api_key)
    timeout = httpx.Timeout(REQUEST_SECONDS, connect=CONNECT_SECONDS)
    return httpx.AsyncClient(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=None,
                                                                                    max_keepalive_connections=64))


def _reason(e: Exception) -> str:
    return str(e) or type(e).__name__


async def _json(client: httpx.AsyncClient, method: str, url: str, body: Any = None) -> Any:
    try:
        response = await client.request(method, url, json=body)
    except httpx.HTTPError as e:
        raise EngineError(f"not answering ({_reason(e)})") from None
    if response.status_code == 503:
        raise EngineError("not ready (503: still loading the model?)")
    if response.status_code != 200:
        raise EngineError(f"answered {response.status_code} to {method} {httpx.URL(url).path}")
    try:
        return response.json()
    except ValueError:
        raise EngineError(f"answered {httpx.URL(url).path} with something that is not JSON") from None


async def healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/health", timeout=HEALTH_SECONDS)).status_code == 200
    except httpx.HTTPError:
        return False


async def engine_facts(client: httpx.AsyncClient, url: str) -> EngineFacts:
    """Its slots and context (EngineError when it is down or is not a llama-server)."""
    props = await _json(client, "GET", f"{url}/props")
    models = await _json(client, "GET", f"{url}/v1/models")
    try:
        meta = models["data"][0]["meta"]
        return EngineFacts(int(props["total_slots"]), int(props["default_generation_settings"]["n_ctx"]),
                           int(meta["n_vocab"]))
    except (KeyError, IndexError, TypeError, ValueError):
        raise EngineError("does not describe itself as llama-server does (/props, /v1/models)") from None


async def vocabulary_difference(client: httpx.AsyncClient, url: str, vocab: Vocabulary, n_vocab: int,
                                theirs: int) -> str | None:
    """How the engine's vocabulary differs from ours (None: every token's bytes, markup written out, equal)."""
    if theirs != n_vocab:
        return f"its vocabulary has {theirs:,} tokens, this model's {n_vocab:,}"
    for start in range(0, n_vocab, CHECK_CHUNK):
        ids = list(range(start, min(start + CHECK_CHUNK, n_vocab)))
        reply = await _json(client, "POST", f"{url}/tokenize", {"content": ids, "with_pieces": True})
        try:
            pieces = [(int(entry["id"]), entry["piece"]) for entry in reply["tokens"]]
        except (KeyError, TypeError, ValueError):
            raise EngineError("answered /tokenize as llama-server does not") from None
        if [token for token, _ in pieces] != ids:
            return f"it does not read back token ids {start:,}–{ids[-1]:,} as given"
        for token, piece in pieces:
            their_bytes = bytes(piece) if isinstance(piece, list) else str(piece).encode()
            if their_bytes != (ours := vocab.marked_piece(token)):
                return f"token {token:,} is {their_bytes!r} there and {ours!r} here"
    return None


def completion_body(job: Job, n_predict: int) -> dict[str, Any]:
    """llama-server's /completion request for `job`: its prompt as ids, and every sampling setting spelled out."""
    s: SamplerSettings = job.sampling
    body: dict[str, Any] = {
        "prompt": job.prompt, "n_predict": n_predict, "stream": True, "cache_prompt": True, "return_tokens": True,
        "sse_ping_interval": PING_SECONDS, "samplers": SAMPLERS, "temperature": s.temperature,
        # greedy: one candidate kept first, as our decoder's argmax (else temperature 0 still has llama-server
        # normalise all 151,552 candidates for every token: 8 streams 207 → 290 tokens/s on 2 cores)
        "top_k": 1 if s.temperature <= 0 else s.top_k, "top_p": s.top_p, "min_p": s.min_p, "typical_p": 1.0,
        "xtc_probability": 0.0, "top_n_sigma": -1.0, "dynatemp_range": 0.0, "mirostat": 0, "dry_multiplier": 0.0,
        "repeat_penalty": s.repeat_penalty, "repeat_last_n": PENALTY_WINDOW, "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty, "seed": RANDOM_SEED if s.seed is None else s.seed & 0xFFFFFFFF,
        "n_probs": 0, "stop": [], "ignore_eos": False, "logit_bias": [], "n_indent": 0, "t_max_predict_ms": -1,
    }
    if s.grammar is not None:
        body["grammar"] = s.grammar
    return body


class PieceIndex:
    """Token bytes back to ids, for the tokens an engine's stream leaves out: llama-server sends a token that
    ends inside a UTF-8 character only within the next one's text, without its id."""

    def __init__(self, vocab: Vocabulary, n_vocab: int) -> None:
        self.vocab = vocab
        self.ids: dict[bytes, int] = {}
        for token in range(n_vocab):
            piece = vocab.piece(token)
            if piece and vocab.marked_piece(token) == piece:  # text tokens only: markup is never left out
                self.ids.setdefault(piece, token)
        self.longest = max(map(len, self.ids), default=1)

    def cover(self, data: bytes) -> list[int]:
        """Tokens whose bytes make `data`, longest first (every byte is a token of a byte-level vocabulary); past
        SPLIT_BYTES a token per byte, so that what an engine sends costs time in proportion to its length."""
        if len(data) > SPLIT_BYTES:
            return [token for token in (self.ids.get(data[i:i + 1]) for i in range(len(data))) if token is not None]
        tokens, position = [], 0
        while position < len(data):
            for end in range(min(len(data), position + self.longest), position, -1):
                if (token := self.ids.get(data[position:end])) is not None:
                    tokens.append(token)
                    position = end
                    break
            else:
                position += 1  # a byte no token makes: nothing to show for it
        return tokens

    def split(self, data: bytes, count: int) -> list[int] | None:
        """`count` tokens whose bytes make `data` (None: there are none, or `data` is too long to search)."""
        if count > len(data) or len(data) > SPLIT_BYTES:  # no token is empty; an engine's count is not trusted
            return None
        reached: list[dict[int, tuple[int, int]]] = [{0: (0, -1)}]  # per tokens used: position -> (from, token)
        for _ in range(count):
            following: dict[int, tuple[int, int]] = {}
            for position in reached[-1]:
                for end in range(position + 1, min(len(data), position + self.longest) + 1):
                    token = self.ids.get(data[position:end])
                    if token is not None and end not in following:
                        following[end] = (position, token)
            reached.append(following)
        if len(data) not in reached[-1]:
            return None
        tokens, position = [], len(data)
        for step in reversed(reached[1:]):
            position, token = step[position]
            tokens.append(token)
        return tokens[::-1]


class TokenRelay:
    """One stream's token ids, in order, including those its chunks leave out."""

    def __init__(self, index: PieceIndex) -> None:
        self.index = index
        self.received = 0  # tokens the engine has generated so far, by its count

    def take(self, chunk: dict[str, Any]) -> list[int]:
        given = [int(t) for t in chunk.get("tokens") or []]
        generated = int(chunk.get("tokens_predicted", self.received + len(given)))
        missing = generated - self.received - len(given)
        self.received = generated
        if missing <= 0 or not given:  # nothing left out, or the end: a cut-off character's bytes are lost anyway
            return given
        text = str(chunk.get("content", "")).encode()
        tail = b"".join(self.index.vocab.piece(t) for t in given)
        held = text[: len(text) - len(tail)] if tail and text.endswith(tail) else text
        found = self.index.split(held, missing)
        if found is None:  # bytes that are no UTF-8 reach us as U+FFFD: the ids are gone, the text is kept
            found = self.index.cover(held)
        return found + given


@dataclass
class Finish:
    """How an engine's generation ended."""

    reason: str  # "eos" | "limit" | "word" | "none" | "stopped" (we stopped it: past a stop token, or its limit)
    evaluated: int | None = None  # prompt tokens the engine computed (the rest came from its slot's cache)


async def generate(url: str, headers: dict[str, str], job: Job, n_predict: int, relay: TokenRelay,
                   on_tokens: Callable[[list[int]], bool]) -> Finish:
    """Run `job` on the engine, handing each chunk's tokens to `on_tokens` (which returns False to stop it
    there: the connection closes, and llama-server cancels the task and frees the slot). Read to the engine's
    last chunk otherwise: it says how much of the prompt was read and why it stopped."""
    started, evaluated = False, None
    body = json.dumps(completion_body(job, n_predict)).encode()
    try:
        async with engine_http.post(url, "/completion", body, headers, CONNECT_SECONDS) as reply:
            if reply.status != 200:
                _refuse(reply.status, await reply.body())
            async for line in reply.lines():
                if not line.startswith(b"data: "):
                    continue  # blank separators and the engine's pings
                chunk = _chunk(line[len(b"data: "):], started)
                if (timings := chunk.get("timings")) and "prompt_n" in timings:  # in the last chunk
                    evaluated = int(timings["prompt_n"])
                tokens = relay.take(chunk)
                started = started or bool(tokens)
                if tokens and not on_tokens(tokens):
                    return Finish("stopped", evaluated)
                if chunk.get("stop") is True:
                    return Finish(str(chunk.get("stop_type", "none")), evaluated)
    except (OSError, ValueError) as e:  # ValueError: what the engine sent was not what it says it is
        raise EngineError(f"stopped answering ({_reason(e)})", started) from None
    raise EngineError("ended its stream before the reply's end", started)


def _chunk(data: bytes, started: bool) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise EngineError("sent a stream chunk that is not JSON", started) from None
    if not isinstance(chunk, dict):
        raise EngineError("sent a stream chunk that is not an object", started)
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise EngineError(f"failed mid-reply ({message})", started)
    return chunk


def _refuse(status: int, body: bytes) -> None:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", errors="replace")
    if 400 <= status < 500:
        raise EngineRefused(f"the engine refused the request: {message}")
    raise EngineError(f"answered {status} ({message})")

"""Prompts already read, kept on disk: a sequence's KV state (llama.cpp's sequence state API) saved
after a long prompt, so that the next run that starts with the same tokens (a resumed chat, the same
document in a new one, a server request after a restart) loads it and reads only the rest.

One file an entry: a JSON header (what it was made by: the model file's identity, the llama.cpp build,
the KV types; the token count; a CRC of the tokens and the state together), the tokens, the state. Files
are written whole or not at all; the folder is held to a size by dropping the least recently used. An
entry that is corrupt, truncated, from another model or another llama.cpp build is never loaded: it is
skipped (with a note when it claimed to match) and the prompt is read again. The folder is data that may
be damaged or hostile: every header field is checked for its type and range, only regular files are
opened (never waiting on a FIFO, never through a link), and tokens rewritten in an entry fail its CRC, so
an entry is never loaded for a prompt it did not read.

One of the modules of core/llama/, the only ones importing llama_cpp.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glm4_local.core.filetext import FileTextError, open_regular

MAGIC = b"G4KV"
VERSION = 2  # 1: the CRC covered the state only
MAX_TOKENS = 1 << 24  # more than any context
MAX_STATE_BYTES = 1 << 40
SUFFIX = ".kvcache"
MIN_SAVED_TOKENS = 2048  # new tokens worth a save: fewer are read again faster than a state is written and read
PREVIEW_CHARS = 60  # of the prompt's first words, kept in the header for `glm4-local cache`
MIN_GAIN_TOKENS = 256  # load from disk only when it saves at least this much reading
READ_CHUNK = 4 << 20  # a state is read and checked this much at a time

StateBuffer = bytearray | mmap.mmap  # a sequence's state, writable (its header is laid out in place)


def model_identity(path: Path, extra: str) -> str:
    """The model file (size, first and last MiBs) and how it runs (llama.cpp build, KV types): an entry
    made under any other identity is not this model's."""
    digest = hashlib.sha256(extra.encode())
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as file:
        digest.update(file.read(4 << 20))
        file.seek(max(0, size - (1 << 20)))
        digest.update(file.read())
    return digest.hexdigest()[:32]


@dataclass
class Entry:
    path: Path
    tokens: np.ndarray  # int32
    size: int  # of the file


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PromptDiskCache:
    """Entries of one model identity in `folder`, at most `max_bytes` of them (all identities together)."""

    def __init__(self, folder: Path, identity: str, max_bytes: int, notify: Callable[[str], None],
                 model_name: str = "", preview: Callable[[Sequence[int]], str] | None = None) -> None:
        self.folder = folder
        self.identity = identity
        self.max_bytes = max_bytes
        self.notify = notify
        self.model_name = model_name  # for `glm4-local cache`: whose entry it is, and how the prompt begins
        self.preview = preview
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-cache")
        self._lock = threading.Lock()
        self.saved = 0  # entries written and loaded by this process (for tests and /stats)
        self.loaded = 0

    # -- reading ---------------------------------------------------------------------------------
    def _entries(self) -> list[Entry]:
        found = []
        for path in self.folder.glob(f"*{SUFFIX}") if self.folder.is_dir() else []:
            parsed = read_header(path)
            if parsed is None or parsed[0]["identity"] != self.identity:
                continue
            header, offset = parsed
            try:
                with open_regular(path, follow_links=False) as file:
                    file.seek(offset)
                    tokens = np.frombuffer(file.read(4 * header["n_tokens"]), dtype="<i4")
                    size = os.fstat(file.fileno()).st_size
            except (OSError, FileTextError):
                continue
            if len(tokens) == header["n_tokens"]:
                found.append(Entry(path, tokens, size))
        return found

    def best(self, prompt: Sequence[int], have: int) -> tuple[Entry, int] | None:
        """The entry sharing the longest prefix with `prompt`, if it beats `have` tokens by enough."""
        wanted = np.asarray(prompt, dtype=np.int32)
        best: tuple[Entry, int] | None = None
        for entry in self._entries():
            shared = common_prefix_length(entry.tokens, wanted)
            if shared >= have + MIN_GAIN_TOKENS and (best is None or shared > best[1]):
                best = (entry, shared)
        return best

    def state_of(self, entry: Entry, streams: int = 1, stream: int = 0) -> StateBuffer | None:
        """The entry's state bytes, checked whole, laid out for a context of `streams` KV buffers whose
        buffer `stream` is the sequence's (see in_streams); None (with a note) when the file is damaged."""
        parsed = read_header(entry.path)
        if parsed is None:
            return None
        header, offset = parsed
        size = header["state_bytes"]
        try:
            with open_regular(entry.path, follow_links=False) as file:
                whole = offset + 4 * header["n_tokens"] + size == os.fstat(file.fileno()).st_size
                state = _room(size + 4 * (streams - 1) if whole else 0)  # never what a header merely claims
                view = memoryview(state)[4 * stream: 4 * stream + size]
                file.seek(offset)
                tokens = file.read(4 * header["n_tokens"])
                got, crc = _read_checked(file, view, zlib.crc32(tokens)) if whole else (-1, -1)
        except (OSError, FileTextError):
            return None
        if (got != size or tokens != entry.tokens.tobytes() or crc != header["crc32"]
                or size < STATE_HEAD + 4 or STREAM_COUNT.unpack_from(view, STATE_HEAD)[0] != 1):
            self.notify(f"prompt cache: {entry.path.name} is damaged (truncated or changed); ignored, the "
                        "prompt is read again")
            with contextlib.suppress(OSError):
                entry.path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # recently used: evicted last
        return in_streams(state, streams, stream)

    def restore(self, ll: Any, ctx: Any, memory: Any, seq: int, prompt: Sequence[int], have: int,
                streams: int = 1, stream: int = 0) -> list[int] | None:
        """Load into sequence `seq` (in KV buffer `stream` of `streams`) the entry sharing the longest prefix
        with `prompt` (if it beats the `have` tokens the sequence holds), trimmed to that prefix; the tokens it
        now holds. None: nothing better, or a damaged or refused entry (the sequence is then emptied, to be
        read again)."""
        found = self.best(prompt, have)
        state = self.state_of(found[0], streams, stream) if found else None
        if found is None or state is None:
            return None
        entry, shared = found
        ll.llama_memory_seq_rm(memory, seq, 0, -1)
        if not write_state(ll, ctx, seq, state):
            ll.llama_memory_seq_rm(memory, seq, 0, -1)
            self.notify(f"prompt cache: llama.cpp refused {entry.path.name}; the prompt is read again")
            return []
        keep = min(shared, len(prompt) - 1)
        ll.llama_memory_seq_rm(memory, seq, keep, -1)
        self.loaded += 1
        return [int(t) for t in entry.tokens[:keep]]

    # -- writing ---------------------------------------------------------------------------------
    def save(self, tokens: Sequence[int], state: bytes | bytearray | memoryview) -> concurrent.futures.Future[None]:
        """Write an entry in the background (the decoder goes on); older entries it extends are dropped."""
        tokens_array = np.asarray(tokens, dtype="<i4")
        return self.writer.submit(self._write, tokens_array, state)

    def _write(self, tokens: np.ndarray, state: bytes | bytearray | memoryview) -> None:
        crc = zlib.crc32(state, zlib.crc32(tokens.tobytes()))
        header = json.dumps({"identity": self.identity, "n_tokens": len(tokens), "state_bytes": len(state),
                             "crc32": crc, "created": time.time(), "model": self.model_name,
                             "preview": self._preview(tokens)}).encode()
        name = hashlib.sha256(self.identity.encode() + tokens.tobytes()).hexdigest()[:32] + SUFFIX
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / name
            tmp = self.folder / f".{name}.{os.getpid()}.tmp"
            with tmp.open("wb") as file:
                file.write(MAGIC + struct.pack("<II", VERSION, len(header)) + header)
                file.write(tokens.tobytes())
                file.write(state)
            os.replace(tmp, path)
        except OSError as e:
            self.notify(f"prompt cache: could not save to {self.folder} ({e.strerror}); going on without it")
            with contextlib.suppress(OSError, UnboundLocalError):
                tmp.unlink()
            return
        with self._lock:
            self.saved += 1
            for entry in self._entries():  # a shorter prefix of this one is of no more use
                if entry.path != path and common_prefix_length(entry.tokens, tokens) == len(entry.tokens):
                    with contextlib.suppress(OSError):
                        entry.path.unlink()
            evict(self.folder, self.max_bytes)

    def _preview(self, tokens: np.ndarray) -> str:
        if self.preview is None:
            return ""
        try:
            return " ".join(self.preview(tokens[:64].tolist()).split())[:PREVIEW_CHARS]
        except Exception:  # a label only: an entry is worth saving without it
            return ""

    def close(self) -> None:
        self.writer.shutdown(wait=True)


def _room(size: int) -> StateBuffer:
    """Writable room for `size` bytes of state. Where the system has MAP_POPULATE, an anonymous mapping whose
    pages are all made at once: a fresh buffer takes a page fault every 4 KiB as a state is read into it, and
    a 9B model's state of a few thousand tokens is hundreds of MB."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if size == 0 or not populate:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)


def _read_checked(file: Any, view: memoryview, crc: int) -> tuple[int, int]:
    """Fill `view` from `file` a chunk at a time, each chunk's CRC taken while it is still in the CPU's caches:
    (bytes read, the CRC continued from `crc`)."""
    got = 0
    while got < len(view):
        count = file.readinto(view[got: got + READ_CHUNK])
        if not count:
            break
        crc = zlib.crc32(view[got: got + count], crc)
        got += count
    return got, crc


def read_header(path: Path) -> tuple[dict[str, Any], int] | None:
    """(header, where the tokens start) of an entry file of ours, None when it is not one: every field
    of the right type and range (a file shorter or longer than they say is damaged: state_of says so)."""
    try:
        with open_regular(path, follow_links=False) as file:
            start = file.read(12)
            if len(start) < 12 or start[:4] != MAGIC:
                return None
            version, length = struct.unpack("<II", start[4:])
            if version != VERSION or length > 1 << 20:
                return None
            header = json.loads(file.read(length))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, FileTextError):
        return None
    return (header, 12 + length) if _valid_header(header) else None


def _valid_header(header: Any) -> bool:
    def whole(value: Any, top: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top

    return (isinstance(header, dict) and isinstance(header.get("identity"), str)
            and whole(header.get("n_tokens"), MAX_TOKENS) and header["n_tokens"] > 0
            and whole(header.get("state_bytes"), MAX_STATE_BYTES) and whole(header.get("crc32"), 0xFFFFFFFF))


def entries_on_disk(folder: Path) -> list[tuple[Path, int, float]]:
    """(file, bytes, last used) of every entry, most recently used first (for `glm4-local cache`): regular
    files only, never what a link points to."""
    found = []
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found.append((path, info.st_size, info.st_mtime))
    return sorted(found, key=lambda e: e[2], reverse=True)


def entry_label(path: Path) -> tuple[str, str]:
    """(model file name, the prompt's first words) an entry says it holds; empty where it does not say."""
    parsed = read_header(path)
    if parsed is None:
        return "", ""
    header = parsed[0]
    model, preview = (header.get(k) for k in ("model", "preview"))
    return (model[:200] if isinstance(model, str) else "", preview[:PREVIEW_CHARS] if isinstance(preview, str) else "")


def evict(folder: Path, max_bytes: int) -> list[Path]:
    """Drop the least recently used entries until the folder holds at most `max_bytes`."""
    entries = entries_on_disk(folder)
    total, removed = sum(size for _, size, _ in entries), []
    for path, size, _ in reversed(entries):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size
            removed.append(path)
    return removed


def read_state(ll: Any, ctx: Any, seq: int, streams: int = 1, stream: int = 0) -> memoryview | None:
    """A sequence's KV state, as llama.cpp serializes it in a context of one KV buffer (what entries hold,
    whatever context wrote or reads them; see in_streams); None if it is not one sequence's."""
    size = int(ll.llama_state_seq_get_size(ctx, seq))
    buffer = bytearray(size)
    view = (ctypes.c_uint8 * size).from_buffer(buffer)
    written = int(ll.llama_state_seq_get_data(ctx, view, size, seq))
    return one_stream(buffer, written, streams, stream)


def write_state(ll: Any, ctx: Any, seq: int, state: StateBuffer) -> bool:
    """Load a state into a sequence; False when llama.cpp refuses it (another layout, no room)."""
    view = (ctypes.c_uint8 * len(state)).from_buffer(state)
    return int(ll.llama_state_seq_set_data(ctx, view, len(state), seq)) == len(state)


# llama.cpp's state of a sequence: a magic number and the sequence's id (8 bytes), its context's count of KV
# buffers, then each buffer's count of the sequence's cells (their positions, keys and values follow that
# count): zero for every buffer but the sequence's own. Entries hold it as a context of one buffer writes it,
# so that a chat's entry loads into a server with a buffer a slot and back (llama.cpp refuses another count)
STATE_HEAD = 8
STREAM_COUNT = struct.Struct("<I")


def one_stream(state: bytearray, size: int, streams: int, stream: int) -> memoryview | None:
    """The first `size` bytes of a state written by a context of `streams` buffers, the sequence's in buffer
    `stream`, as one of a single buffer writes it (in place: states are gigabytes)."""
    counts, trailing = STATE_HEAD + 4, 4 * (streams - stream - 1)
    if (size < counts + 4 * streams or STREAM_COUNT.unpack_from(state, STATE_HEAD)[0] != streams
            or any(state[counts: counts + 4 * stream]) or any(state[size - trailing: size])):
        return None
    head, start = bytes(state[:STATE_HEAD]), 4 * stream
    state[start: start + STATE_HEAD] = head
    STREAM_COUNT.pack_into(state, start + STATE_HEAD, 1)
    return memoryview(state)[start: size - trailing]


def in_streams(state: StateBuffer, streams: int, stream: int) -> StateBuffer:
    """A one-buffer state read into `state` from byte 4 × `stream` on, with 4 × (`streams` - 1) bytes of room
    (zeros), laid out for a context of `streams` buffers, the sequence's in buffer `stream` (in place)."""
    start = 4 * stream
    head = bytes(state[start: start + STATE_HEAD])
    state[start: start + STATE_HEAD + 4] = bytes(STATE_HEAD + 4)  # the other buffers' counts: none
    state[:STATE_HEAD] = head
    STREAM_COUNT.pack_into(state, STATE_HEAD, streams)
    return state

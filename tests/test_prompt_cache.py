"""Never the same prompt twice: long prompts' KV state kept on disk and loaded by the next run that
starts with them; damaged, foreign and refused entries are read again, never loaded into an answer."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import invoke

from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.prompt_cache import SUFFIX, entries_on_disk
from glm4_local.core.llama.sampling import SamplerSettings

GREEDY = SamplerSettings(temperature=0.0)


def long_prompt(n: int = 3000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 300) for _ in range(n)]


def answer(model: Path, folder: Path | None, prompt: list[int], notes: list[str] | None = None,
           max_bytes: int = 2**30) -> Job:
    """One greedy answer in a fresh runtime (a new run of the program), its disk cache in `folder`."""
    options = RuntimeOptions(ctx=4096, threads=2, prompt_cache=folder, prompt_cache_bytes=max_bytes)
    runtime = load_runtime(ModelFacts.read(model), options, notify=(notes if notes is not None else []).append)
    job = Job(list(prompt), GREEDY, 12, frozenset())
    runtime.decoder.submit(job)
    while runtime.decoder.has_work():
        runtime.decoder.step()
    if runtime.decoder.disk is not None:
        runtime.decoder.disk.close()  # the entry is written in the background: wait for it
    runtime.decoder.close()
    return job


@pytest.fixture
def model(make_gguf: Callable[..., Path]) -> Path:
    return make_gguf("f32")


def test_the_next_run_reads_only_the_new_tokens_and_answers_the_same(model: Path, tmp_path: Path) -> None:
    prompt = long_prompt()
    plain = answer(model, None, prompt)
    first = answer(model, tmp_path, prompt)
    assert first.evaluated_tokens == len(prompt) and first.generated == plain.generated
    [(entry, size, _)] = entries_on_disk(tmp_path)
    assert entry.suffix == SUFFIX and size > 0
    again = answer(model, tmp_path, prompt)
    assert again.evaluated_tokens == 1 and again.generated == plain.generated  # the last token gives logits
    longer = prompt + long_prompt(400, seed=1)  # the conversation goes on: its new turn only
    plain_longer = answer(model, None, longer)
    resumed = answer(model, tmp_path, longer)
    # the entry held the prompt and the reply: only what differs from there on is read
    assert resumed.evaluated_tokens <= 400 + len(first.generated) and resumed.generated == plain_longer.generated


@pytest.mark.parametrize("damage", ["flip", "truncate", "refused"])
def test_a_damaged_entry_is_read_again_with_a_note(model: Path, tmp_path: Path, damage: str) -> None:
    prompt = long_prompt()
    first = answer(model, tmp_path, prompt)
    [(entry, _, _)] = entries_on_disk(tmp_path)
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF
    elif damage == "truncate":
        del data[-5000:]
    else:  # a well-formed file whose state llama.cpp cannot take (as from another build): CRC made to match
        import struct
        import zlib

        length = struct.unpack("<I", data[8:12])[0]
        header = json.loads(data[12:12 + length])
        state_at = 12 + length + 4 * header["n_tokens"]
        data[state_at:] = b"\x01" * (len(data) - state_at)
        header["crc32"] = zlib.crc32(data[state_at:], zlib.crc32(data[12 + length:state_at]))
        encoded = json.dumps(header).encode()
        data[8:12 + length] = struct.pack("<I", len(encoded)) + encoded
    entry.write_bytes(bytes(data))
    notes: list[str] = []
    again = answer(model, tmp_path, prompt, notes)
    assert again.evaluated_tokens == len(prompt) and again.generated == first.generated
    assert len(notes) == 1 and ("damaged" in notes[0] or "refused" in notes[0]), notes


def _rewrite_header(entry: Path, change: Callable[[dict], object]) -> None:
    import struct

    data = entry.read_bytes()
    length = struct.unpack("<I", data[8:12])[0]
    header = json.loads(data[12:12 + length])
    encoded = json.dumps(change(header)).encode()
    entry.write_bytes(data[:8] + struct.pack("<I", len(encoded)) + encoded + data[12 + length:])


@pytest.mark.parametrize("hostile", ["null", "list", "huge count", "count as text", "negative count", "bool count",
                                     "tokens rewritten", "fifo", "folder"])
def test_a_hostile_entry_is_never_loaded_and_never_stops_the_chat(model: Path, tmp_path: Path, hostile: str) -> None:
    import os

    prompt = long_prompt()
    first = answer(model, tmp_path, prompt)
    [(entry, _, _)] = entries_on_disk(tmp_path)
    other_prompt = long_prompt(seed=9)
    changes = {"null": lambda h: None, "list": lambda h: [], "huge count": lambda h: {**h, "n_tokens": 1e400},
               "count as text": lambda h: {**h, "n_tokens": str(h["n_tokens"])},
               "negative count": lambda h: {**h, "n_tokens": -1}, "bool count": lambda h: {**h, "n_tokens": True}}
    if hostile in changes:
        _rewrite_header(entry, changes[hostile])
    elif hostile == "tokens rewritten":  # another prompt's tokens over this entry's: its state is not theirs
        data = bytearray(entry.read_bytes())
        at = data.index(b"}", 12) + 1
        data[at:at + 4 * len(other_prompt)] = b"".join(t.to_bytes(4, "little") for t in other_prompt)
        entry.write_bytes(bytes(data))
        prompt = other_prompt
        first = answer(model, None, prompt)
    else:
        entry.unlink()
        os.mkfifo(entry) if hostile == "fifo" else entry.mkdir()
    again = answer(model, tmp_path, prompt)  # never a hang, a traceback, or another prompt's state
    assert again.evaluated_tokens == len(prompt) and again.generated == first.generated
    cleared = invoke(["cache", "--clear", "--dir", str(tmp_path)])
    assert cleared.exit_code == 0 and "removed" in cleared.stdout, cleared.stdout + cleared.stderr


def answer_in_slot(model: Path, folder: Path, prompt: list[int], slots: int, slot: int) -> Job:
    """One greedy answer in slot `slot` of a fresh runtime of `slots` slots (a KV buffer each when several, one
    when alone), its disk cache in `folder`."""
    options = RuntimeOptions(ctx=4096, threads=2, prompt_cache=folder)
    decoder = load_runtime(ModelFacts.read(model), options, slots=slots).decoder
    assert decoder.kv_unified == (slots == 1)
    before = [Job([1 + i, 2, 3], GREEDY, 1, frozenset()) for i in range(slot)]  # the slots before it, used
    job = Job(list(prompt), GREEDY, 12, frozenset())
    for batch in (before, [job]):
        for queued in batch:
            decoder.submit(queued)
        while decoder.has_work():
            decoder.step()
    assert decoder.disk is not None
    decoder.disk.close()
    decoder.close()
    return job


@pytest.mark.parametrize(("written", "read"), [((1, 0), (4, 2)), ((4, 3), (1, 0)), ((4, 1), (3, 2))])
def test_an_entry_loads_whatever_kv_layout_wrote_it(model: Path, tmp_path: Path, written: tuple[int, int],
                                                     read: tuple[int, int]) -> None:
    """A chat (one slot, one KV buffer) and a server (a buffer a slot) keep their entries in one layout, so each
    loads what the other saved, into any slot, and answers as from the prompt read."""
    prompt = long_prompt()
    first = answer_in_slot(model, tmp_path, prompt, *written)
    assert first.evaluated_tokens == len(prompt) and len(entries_on_disk(tmp_path)) == 1
    again = answer_in_slot(model, tmp_path, prompt, *read)
    assert again.evaluated_tokens == 1 and again.generated == first.generated


def test_another_models_entries_are_not_used(model: Path, make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    prompt = long_prompt()
    answer(model, tmp_path, prompt)
    other = answer(make_gguf("f32", seed=7), tmp_path, prompt)
    assert other.evaluated_tokens == len(prompt)
    assert len(entries_on_disk(tmp_path)) == 2  # each model its own entry


def test_the_size_bound_holds(model: Path, tmp_path: Path) -> None:
    answer(model, tmp_path, long_prompt(seed=1))
    one = entries_on_disk(tmp_path)[0][1]
    for seed in (2, 3, 4):
        answer(model, tmp_path, long_prompt(seed=seed), max_bytes=int(one * 2.5))
    entries = entries_on_disk(tmp_path)
    assert len(entries) == 2 and sum(size for _, size, _ in entries) <= one * 2.5


def test_the_chat_and_the_cache_command(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "book.txt").write_text("The quick brown fox jumps over the lazy dog. " * 250)
    args = ["chat", str(scripted_gguf("answer")), "-p", "Summarise", "--json", "--file", "book.txt"]
    first = json.loads(invoke(args).stdout)
    again = json.loads(invoke(args).stdout)
    assert first["content"] == again["content"] == "Sunny day"
    assert first["timings"]["prompt_tokens_evaluated"] > 2048 > 10 > again["timings"]["prompt_tokens_evaluated"]
    assert json.loads(invoke([*args, "--cache-size", "0"]).stdout)["timings"]["prompt_tokens_evaluated"] > 2048
    listed = invoke(["cache"]).stdout.splitlines()
    assert listed[0].startswith("1 saved prompt in ")
    # which model, how the conversation begins, its size and age: not only a hash file name
    assert re.fullmatch(r"  +[\d.]+ MiB  used +just now  tiny-f32\.gguf  “\[File Name\] book\.txt \[File Content\] "
                        r"The quick brown fox.*…”", listed[1]), listed[1]
    assert SUFFIX not in listed[1]
    assert "removed 1 saved prompt from" in invoke(["cache", "--clear"]).stdout
    assert "0 saved prompts" in invoke(["cache"]).stdout


@pytest.mark.processes
def test_serve_keeps_its_slots_prompts_across_a_restart(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    from helpers.serving import Server

    book = "The quick brown fox jumps over the lazy dog. " * 250
    messages = [{"role": "user", "content": book + "Summarise."}]

    def ask() -> int:
        server = Server(scripted_gguf("answer"), tmp_path, "--cache-dir", str(tmp_path / "kv"), "--ctx", "4096")
        try:
            reply = server.client().chat.completions.create(model="glm-4", messages=messages, max_tokens=4)
            assert reply.choices[0].message.content == "Sunny day"
            return reply.usage.prompt_tokens_details.cached_tokens
        finally:
            server.stop()

    assert ask() == 0
    assert ask() > 2000  # the new server loaded the prompt from disk

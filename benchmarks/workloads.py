"""Four everyday jobs, each timed end to end as a user meets it, glm4-local serve against llama.cpp's
llama-server on the same GGUF, both at their defaults (2 threads each; where a flag of either is what the job
needs, it is named), rounds interleaved, every figure a ratio measured in this run:

1. a question over a long document whose answer quotes it (a scripted model reciting a 120-token passage of
   the document; the document already read, as for a follow-up question): glm4-local's prompt-lookup
   speculation (on by default) against llama-server at its defaults, and with `--spec-type ngram-simple`;
2. a long conversation resumed after a restart of the server: time to the first token of the next turn,
   glm4-local with `--cache-dir` (its disk prompt cache) against llama-server, which reads it again, and
   against llama-server with `--slot-save-path`, its slot saved before the restart and restored after it by
   the client's own calls to `/slots` (timed with the next turn);
3. four users at once with the same long system prompt and tools, after a first user: the time until all four
   have their replies (glm4-local shares the prefix one slot holds with the others);
4. a tool-calling agent loop of five calls with their observations: glm4-local parses GLM-4's calls itself
   (Chat Completions with `tools`); llama-server cannot parse GLM-4-9B's calls, so its client renders GLM-4's
   prompts and reads the calls from the text (raw `/completion` on token ids), the best it allows.

Models: q8_0, 4 layers × 512, GLM-4's real 151,552-token vocabulary (from ../shared): scripted (jobs 1, 4) or
random (2, 3).

    bash benchmarks/build_llama_server.sh             # once, ~8 minutes on 2 cores
    python benchmarks/workloads.py [--llama-server PATH] [--rounds 3] [--only 1,2,3,4]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import SMALL, complete, passage_script, passage_words
from helpers import factory
from helpers.serving import Server
from llama_server import DEFAULT_BINARY, LlamaServer, exit_unless_built

from glm4_local.chat.runtime import Vocabulary
from glm4_local.chat.setup import ModelFacts
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.core.llama import door

THREADS = ("-t", "2", "-tb", "2")
DOCUMENT_TOKENS = 2000
CONVERSATION_TOKENS = 6000
SYSTEM_TOKENS = 2000
CALLS = 5
# a model that calls GLM-4's code interpreter again after every result, in tokens of GLM-4's own vocabulary
LOOP = tuple(itertools.pairwise(["<|assistant|>", "python", "\n", "print", "(", "1", ")", "<|observation|>"]))


def build(folder: Path, name: str, spec: factory.Spec) -> Path:
    factory.build_checkpoint(folder / name, spec)
    return convert(str(folder / name), OUT_TYPES["q8_0"], output=folder / f"{name}-q8_0.gguf").path


def vocabulary(model: Path) -> tuple[ModelFacts, Vocabulary]:
    facts = ModelFacts.read(model)
    return facts, Vocabulary(door.load_model(model, header=facts.header, vocab_only=True), facts.family)


def filler(vocab: Vocabulary, count: int, seed: int) -> str:
    """Text of about `count` tokens, words of the vocabulary in an order of their own."""
    words = [vocab.piece(t).decode("utf-8", "ignore") for t in range(3000, 40000, 7)]
    words = [w for w in words if w.startswith(" ") and w[1:].isalpha()]
    text = "".join(words[(seed * 31 + i * 17) % len(words)] for i in range(count))
    return text


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def report(job: str, seconds: dict[str, list[float]], ours: str, theirs: list[str], unit: str = "s") -> None:
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{job}:")
    for name, value in medians.items():
        print(f"  {name:36} {value:8.3f} {unit}")
    for name in theirs:
        print(f"  {name} / {ours}: {medians[name] / medians[ours]:.2f}× (time; above 1: glm4-local faster)")


def job_document(binary: Path, folder: Path, rounds: int) -> None:
    words = passage_words(True)
    model = build(folder, "passage", factory.Spec(dtype="f32", shape=SMALL, real_tokenizer=True,
                                                  script=passage_script(words)))
    _, vocab = vocabulary(model)
    ids = {vocab.piece(i): i for i in range(vocab.model.n_vocab())}
    document = vocab.text_tokens(filler(vocab, DOCUMENT_TOKENS, 1))
    head = vocab.text_tokens("[gMASK]<sop><|user|>\nRead this report:\n", special=True)
    question = vocab.text_tokens("\nQuote the paragraph about the results.", special=False)
    prompt = [*head, *document[: DOCUMENT_TOKENS // 2], *(ids[w.encode()] for w in words),
              *document[DOCUMENT_TOKENS // 2:], *question, vocab.special_ids["<|assistant|>"]]
    starts = {"glm4-local": lambda: Server(model, folder), "llama-server": lambda: LlamaServer(binary, model, *THREADS),
              "llama-server --spec-type ngram-simple": lambda: LlamaServer(binary, model, *THREADS, "--spec-type",
                                                                           "ngram-simple")}
    servers: dict[str, Any] = {}
    seconds: dict[str, list[float]] = {name: [] for name in starts}
    try:
        for name, start in starts.items():
            servers[name] = start()
        for server in servers.values():
            complete(server.json, prompt, 4)  # the document read once, as before a follow-up question
        for _ in range(rounds):
            for name, server in servers.items():
                seconds[name].append(complete(server.json, prompt, len(words) + 1)[3])
    finally:
        for server in servers.values():
            server.stop()
    report(f"1. a question over a {len(prompt):,}-token document, the answer quoting {len(words)} of its tokens",
           seconds, "glm4-local", ["llama-server", "llama-server --spec-type ngram-simple"])


def job_resume(binary: Path, model: Path, folder: Path, rounds: int) -> None:
    _, vocab = vocabulary(model)
    history = [{"role": "user", "content": filler(vocab, CONVERSATION_TOKENS, 2)},
               {"role": "assistant", "content": "Noted."}]
    turn = [*history, {"role": "user", "content": "And what follows from it?"}]
    cache, saved_slots = folder / "prompt-cache", folder / "slots"
    saved_slots.mkdir(exist_ok=True)
    # llama-server at its best: its slot saved to disk before the restart and restored after it, by hand
    # (--slot-save-path and its /slots API), the requests pinned to that slot
    by_hand = {"id_slot": 0}
    restore = {"filename": "conversation.bin"}

    def ask(server: Any, messages: list[dict[str, str]], extra: dict[str, Any]) -> None:
        status, answer = server.json("POST", "/v1/chat/completions",
                                     {"messages": messages, "max_tokens": 1, "temperature": 0, **extra})
        assert status == 200, answer

    def slot(server: Any, action: str) -> None:
        status, answer = server.json("POST", f"/slots/0?action={action}", restore)
        assert status == 200, answer

    def resume(server: Any, extra: dict[str, Any]) -> None:
        if extra:
            slot(server, "restore")
        ask(server, turn, extra)

    variants: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
        "glm4-local --cache-dir": (lambda: Server(model, folder, "--cache-dir", str(cache)), {}),
        "llama-server": (lambda: LlamaServer(binary, model, *THREADS, "--jinja"), {}),
        "llama-server, slot saved by hand": (lambda: LlamaServer(binary, model, *THREADS, "--jinja",
                                                                 "--slot-save-path", str(saved_slots)), by_hand)}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (start, extra) in variants.items():
            server = start()
            try:
                ask(server, history[:1], extra)
                if extra:
                    slot(server, "save")
            finally:
                server.stop()  # the restart: the conversation is only where each keeps it
            server = start()
            try:
                seconds[name].append(timed(functools.partial(resume, server, extra)))
            finally:
                server.stop()
    report(f"2. time to the first token of a {CONVERSATION_TOKENS:,}-token conversation resumed after a restart",
           seconds, "glm4-local --cache-dir", ["llama-server", "llama-server, slot saved by hand"])


def job_shared_system(binary: Path, model: Path, folder: Path, rounds: int) -> None:
    _, vocab = vocabulary(model)
    system = {"role": "system", "content": filler(vocab, SYSTEM_TOKENS, 3)}
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": f"does thing {i}",
                                                "parameters": {"type": "object", "properties": {
                                                    "x": {"type": "string"}}}}} for i in range(4)]

    def ask(server: Any, user: str) -> None:
        body = {"messages": [system, {"role": "user", "content": user}], "tools": tools, "max_tokens": 32,
                "temperature": 0}
        status, answer = server.json("POST", "/v1/chat/completions", body)
        assert status == 200, answer

    def four_users(server: Any, round_: int) -> float:
        ask(server, f"first user, round {round_}")
        with ThreadPoolExecutor(4) as pool:
            return timed(lambda: list(pool.map(lambda i: ask(server, f"user {i} of round {round_}"), range(4))))

    seconds: dict[str, list[float]] = {"glm4-local": [], "llama-server": []}
    for round_ in range(rounds):
        for name, start in (("glm4-local", lambda: Server(model, folder)),
                            ("llama-server", lambda: LlamaServer(binary, model, *THREADS, "--jinja"))):
            server = start()
            try:
                seconds[name].append(four_users(server, round_))
            finally:
                server.stop()
    report(f"3. four users at once with the same {SYSTEM_TOKENS:,}-token system prompt and 4 tools", seconds,
           "glm4-local", ["llama-server"])


def job_agent(binary: Path, folder: Path, rounds: int) -> None:
    model = build(folder, "loop", factory.Spec(dtype="f32", shape=SMALL, real_tokenizer=True, script=LOOP))
    facts, vocab = vocabulary(model)
    tools = [{"type": "python"}]  # GLM-4's code interpreter, its calls handed to the client (no --python)
    asked = [{"role": "user", "content": "Work it out step by step with the tool."}]

    def ours(server: Any) -> None:
        messages = list(asked)
        for i in range(CALLS):
            status, answer = server.json("POST", "/v1/chat/completions",
                                         {"messages": messages, "tools": tools, "temperature": 0})
            call = answer["choices"][0]["message"]
            assert status == 200 and call.get("tool_calls"), answer
            messages += [call, {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": f"{i}"}]

    def theirs(server: Any) -> None:
        messages = list(asked)
        for i in range(CALLS):
            prompt = vocab.prompt(facts.template, messages, tools)
            status, answer = server.json("POST", "/completion", {"prompt": prompt, "n_predict": 64, "temperature": 0,
                                                                 "cache_prompt": True, "return_tokens": True})
            name, _, arguments = answer["content"].partition("\n")  # GLM-4's call: the name, a line, the input
            assert status == 200 and name == "python", answer
            function = {"name": name, "arguments": arguments}
            call = {"role": "assistant", "content": None,
                    "tool_calls": [{"id": f"c{i}", "type": "function", "function": function}]}
            messages += [call, {"role": "tool", "tool_call_id": f"c{i}", "content": f"{i}"}]

    names = ("glm4-local", "llama-server", "llama-server --spec-type ngram-simple")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    servers: dict[str, tuple[Any, Callable[[Any], None]]] = {}
    try:
        servers["glm4-local"] = (Server(model, folder), ours)
        servers["llama-server"] = (LlamaServer(binary, model, *THREADS), theirs)
        servers["llama-server --spec-type ngram-simple"] = (
            LlamaServer(binary, model, *THREADS, "--spec-type", "ngram-simple"), theirs)
        for server, run in servers.values():
            run(server)  # warm up
        for _ in range(rounds):
            for name, (server, run) in servers.items():
                seconds[name].append(timed(lambda server=server, run=run: run(server)))
    finally:
        for server, _ in servers.values():
            server.stop()
    report(f"4. a tool-calling agent loop of {CALLS} calls with their observations", seconds, "glm4-local",
           ["llama-server", "llama-server --spec-type ngram-simple"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="1,2,3,4")
    args = parser.parse_args()
    exit_unless_built(args.llama_server, factory.REAL_TOKENIZER)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "1" in only:
            job_document(args.llama_server, folder, args.rounds)
        if only & {"2", "3"}:
            model = build(folder, "random", factory.Spec(dtype="bf16", shape=SMALL, real_tokenizer=True))
            if "2" in only:
                job_resume(args.llama_server, model, folder, args.rounds)
            if "3" in only:
                job_shared_system(args.llama_server, model, folder, args.rounds)
        if "4" in only:
            job_agent(args.llama_server, folder, args.rounds)


if __name__ == "__main__":
    main()

"""`glm4-local serve` against llama.cpp's own `llama-server` on the same GGUF, threads and slots, rounds
interleaved; every figure a ratio measured in this run.

1. plain decoding: aggregate tokens/s of 1, 4 and 8 concurrent greedy requests of 128 tokens on q8_0
   models with GLM-4's real 151,552-token vocabulary (4 layers × 512 and 12 × 1024; `--models`, `--streams`:
   some of them), both servers at their defaults, and each with flash attention off; every cell where
   glm4-local at its defaults is below llama-server at its defaults is named (ratios: medians of the rounds'
   ratios, with the interval the rounds allow for that median: a cell is short or ahead only where the whole
   interval is); `--stream` has every reply streamed, read event by event as a chat page or an SDK client with
   `stream=True` reads it (tokens counted from its final usage chunk); `--starts K` starts the servers K times
   (--rounds rounds each) and pools the rounds: a process keeps a speed of its own from start to stop, so one
   start is one draw of that however many rounds it runs; `--twin` adds a second llama-server process, whose
   ratio to the first is the spread of two alike;
2. speculation (prompt lookup): a scripted model that repeats a 120-token passage of its prompt, and a
   random model asked to continue text already in its prompt; glm4-local with `--speculate auto` and
   `off`, llama-server with `--spec-type ngram-simple` and without.

    bash benchmarks/build_llama_server.sh             # once; optional step, ~8 minutes on 2 cores
    python benchmarks/against_llama_server.py [--llama-server PATH] [--rounds 3] [--only plain|spec]
        [--models small,big] [--streams 1,4,8]       # e.g. one cell, many rounds: --models big --streams 1
        [--starts 4] [--twin] [--defaults-only] [--stream]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import itertools
import json
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import factory
from helpers.serving import Server
from llama_server import DEFAULT_BINARY, LlamaServer

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert

THREADS = 2
SLOTS = 4
WIDTHS = (1, 4, 8)  # concurrent requests (8: twice the slots, half of them waiting at a time)
SLOT_CTX = 1024
TOKENS = 128
SMALL = factory.Shape(n_layer=4, n_embd=512, n_head=8, n_head_kv=2, head_dim=64, n_ff=1536, context=8192)
BIG = factory.Shape(n_layer=12, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=2816, context=8192)
MODELS = {"small": SMALL, "big": BIG}
CONFIDENCE = 0.95
TWIN = "llama-server, second process"

Ask = Callable[[list[dict[str, str]], int], dict[str, Any]]


def ours(model: Path, workdir: Path, *args: str, stream: bool = False) -> tuple[Callable[[], object], Ask]:
    server = Server(model, workdir, "--ctx", str(SLOT_CTX), "--parallel", str(SLOTS), "--threads", str(THREADS),
                    *args)
    return server.stop, asker(server, {}, stream)


def theirs(binary: Path, model: Path, *args: str, stream: bool = False) -> tuple[Callable[[], object], Ask]:
    server = LlamaServer(binary, model, "-c", str(SLOT_CTX * SLOTS), "-np", str(SLOTS), "-t", str(THREADS),
                         "-tb", str(THREADS), *args)
    return server.stop, asker(server, {"cache_prompt": True}, stream)


def asker(server: Server | LlamaServer, extra: dict[str, Any], stream: bool) -> Ask:
    """A greedy chat request to `server`: the whole reply, or (`stream`) the reply streamed and read event by
    event as a client reads one, down to its final usage chunk."""

    def ask(messages: list[dict[str, str]], n: int) -> dict[str, Any]:
        body = {"messages": messages, "max_tokens": n, "temperature": 0, **extra}
        return streamed(server.port, body) if stream else server.json("POST", "/v1/chat/completions", body)[1]

    return ask


def streamed(port: int, body: dict[str, Any]) -> dict[str, Any]:
    """A chat request to the server at `port` with its reply streamed, every event parsed as a client parses it:
    the reply's usage (from its final chunk)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        usage = None
        for line in response:  # one server-sent event a line
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
        if usage is None:
            raise RuntimeError(f"the server on port {port} streamed no usage chunk (HTTP {response.status})")
        return {"usage": usage}
    finally:
        connection.close()


def rate(ask: Ask, prompts: list[list[dict[str, str]]], n: int) -> float:
    """Completion tokens per second over all of `prompts` sent at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda m: ask(m, n), prompts))
    elapsed = time.perf_counter() - started
    return sum(a["usage"]["completion_tokens"] for a in answers) / elapsed


def compare(servers: dict[str, tuple[Callable[[], object], Ask]], prompts: Callable[[int], list[list[dict[str, str]]]],
            widths: list[int], rounds: int, n: int) -> dict[tuple[str, int], list[float]]:
    """Tokens/s of each round per (server, width), rounds interleaved across servers so noise hits all alike,
    each round starting one server further on (a Latin square over as many rounds as servers), so that no
    server is always the one measured first after a change of width."""
    rates: dict[tuple[str, int], list[float]] = {}
    names = list(servers)
    try:
        for _, ask in servers.values():
            ask(prompts(1)[0], 4)  # warm up
        for round_number in range(rounds):
            turn = names[round_number % len(names):] + names[: round_number % len(names)]
            for width in widths:
                for name in turn:
                    rates.setdefault((name, width), []).append(rate(servers[name][1], prompts(width), n))
    finally:
        for stop, _ in servers.values():
            stop()
    return rates


def ratios(ours: list[float], theirs: list[float]) -> list[float]:
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median of the rounds' ratios: each round's two measurements are seconds apart, so the machine's
    drift over the run (±20% here in minutes) cancels, where a ratio of medians would keep it."""
    return statistics.median(ratios(ours, theirs))


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """An interval holding the median of what `values` sample with at least `confidence`, free of any
    assumed distribution: the k-th smallest and k-th largest value, k the largest whose coverage
    1 - 2·P(Binomial(n, ½) < k) reaches it; with too few values, the smallest and largest and their coverage."""
    ordered, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < n // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def stories(width: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Tell me story number {i}."}] for i in range(width)]


def real_vocab_q8_0(folder: Path, shape: factory.Shape) -> tuple[str, Path]:
    """A q8_0 GGUF of `shape` (random bf16 weights) with GLM-4's real vocabulary: its name ("4x512") and path."""
    name = f"{shape.n_layer}x{shape.n_embd}"
    factory.build_checkpoint(folder / name, factory.Spec(dtype="bf16", shape=shape, real_tokenizer=True))
    return name, convert(str(folder / name), OUT_TYPES["q8_0"], output=folder / f"{name}-q8_0.gguf").path


def plain_servers(binary: Path, model: Path, folder: Path, variants: bool, twin: bool,
                  stream: bool) -> dict[str, tuple[Callable[[], object], Ask]]:
    """Both servers at their defaults; `twin`: a second llama-server process alike, `variants`: each without
    flash attention and ours without drafts; `stream`: replies streamed. Started one by one: if one fails,
    those already up are stopped."""
    mine = functools.partial(ours, model, folder, stream=stream)
    yours = functools.partial(theirs, binary, model, stream=stream)
    wanted: dict[str, Callable[[], tuple[Callable[[], object], Ask]]] = {"glm4-local": mine, "llama-server": yours}
    if twin:
        wanted[TWIN] = yours
    if variants:
        wanted |= {"llama-server -fa off": lambda: yours("-fa", "off"),
                   "glm4-local --no-flash-attn": lambda: mine("--no-flash-attn"),
                   "glm4-local --speculate off": lambda: mine("--speculate", "off")}
    servers: dict[str, tuple[Callable[[], object], Ask]] = {}
    try:
        for name, start in wanted.items():
            servers[name] = start()
    except BaseException:
        for stop, _ in servers.values():
            stop()
        raise
    return servers


def over_starts(start_servers: Callable[[], dict[str, tuple[Callable[[], object], Ask]]], widths: list[int],
                rounds: int, starts: int) -> list[dict[tuple[str, int], list[float]]]:
    """compare()'s rates of each start of the servers, each a fresh set of processes: a process keeps a speed of its
    own from start to stop (two identical llama-server processes measured 0.950-1.071 of each other over 4 rounds
    here), which no number of rounds of the same processes averages out."""
    return [compare(start_servers(), stories, widths, rounds, TOKENS) for _ in range(starts)]


def pooled(each_start: list[dict[tuple[str, int], list[float]]], key: tuple[str, int]) -> list[float]:
    return [rate for result in each_start for rate in result[key]]


def twin_line(result: dict[str, list[float]], each_start: list[dict[tuple[str, int], list[float]]], width: int) -> str:
    """Ours against the second llama-server process, and that process against the first (per start too)."""
    line = (f"  glm4-local / a second llama-server process: {paired(result['glm4-local'], result[TWIN]):.3f}; "
            f"that process / the first: {paired(result[TWIN], result['llama-server']):.3f}")
    if len(each_start) > 1:
        line += " (each start: " + ", ".join(
            f"{paired(r[(TWIN, width)], r[('llama-server', width)]):.3f}" for r in each_start) + ")"
    return line


def report_cell(cell: str, width: int, each_start: list[dict[tuple[str, int], list[float]]], variants: bool,
                twin: bool) -> str:
    """Print one model × streams cell over all starts; its verdict: short, level or ahead."""
    names = list(dict.fromkeys(server for server, _ in each_start[0]))
    result = {n: pooled(each_start, (n, width)) for n in names}
    each = ratios(result["glm4-local"], result["llama-server"])
    low, high, coverage = median_interval(each)
    line = ", ".join(f"{n} {statistics.median(result[n]):.1f}" for n in names)
    print(f"{cell}, tok/s (medians): {line}; glm4-local/llama-server {statistics.median(each):.3f} (defaults; "
          f"{low:.3f}-{high:.3f} holds the median with {coverage:.0%}; a median of the rounds' ratios)")
    if variants:
        off = paired(result["glm4-local --no-flash-attn"], result["llama-server -fa off"])
        plain_only = paired(result["glm4-local --speculate off"], result["llama-server"])
        print(f"  both without flash attention {off:.2f}, glm4-local --speculate off / llama-server {plain_only:.2f}")
    if len(each_start) > 1:
        print("  each start of the servers: " + ", ".join(
            f"{paired(r[('glm4-local', width)], r[('llama-server', width)]):.3f}" for r in each_start))
    if twin:
        print(twin_line(result, each_start, width))
    if statistics.median(each) < 1.0:
        print(f"  {cell}: below llama-server at defaults in this run's median")
    return "short" if high < 1.0 else "ahead" if low >= 1.0 else "level"


def plain(binary: Path, folder: Path, shapes: list[factory.Shape], widths: list[int], rounds: int, starts: int = 1,
          variants: bool = True, twin: bool = False, stream: bool = False) -> None:
    if stream:
        print("every reply streamed, read event by event")
    for shape in shapes:
        name, model = real_vocab_q8_0(folder, shape)
        each_start = over_starts(functools.partial(plain_servers, binary, model, folder, variants, twin, stream),
                                 widths, rounds, starts)
        verdicts: dict[str, list[str]] = {"short": [], "level": [], "ahead": []}
        for width in widths:
            cell = f"{name} × {width}"
            verdicts[report_cell(cell, width, each_start, variants, twin)].append(cell)
        listed = {verdict: ", ".join(cells) or "none" for verdict, cells in verdicts.items()}
        print(f"{name}: short of llama-server at defaults (whole interval below 1): {listed['short']}; "
              f"ahead: {listed['ahead']}; not told apart in {rounds * starts} rounds: {listed['level']}")


def passage_words(real: bool) -> tuple[str, ...]:
    """120 distinct single tokens the scripted model recites: words of GLM-4's own vocabulary (`real`),
    else extra tokens of the tiny test vocabulary."""
    if not real:
        return tuple(f" w{i:03d}" for i in range(120))
    words = [t.decode() for t in factory.real_tokens()[2000:] if re.fullmatch(rb" [a-z]{5,}", t)]
    return tuple(words[:120])


def passage_script(words: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return (("<|assistant|>", "\n"), ("\n", words[0]), *itertools.pairwise(words), (words[-1], "<|user|>"))


def complete(url_json: Callable[..., tuple[int, Any]], prompt: list[int], n: int) -> tuple[int, int, int, float]:
    """(completion tokens, drafted, accepted, seconds) of one greedy raw completion of token ids."""
    started = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "cache_prompt": True}
    answer = url_json("POST", "/v1/completions", body)[1]
    elapsed = time.perf_counter() - started
    usage, timings = answer["usage"], answer.get("timings", {})
    details = usage.get("completion_tokens_details") or {}
    accepted = details.get("accepted_prediction_tokens", timings.get("draft_n_accepted", 0))
    drafted = accepted + details.get("rejected_prediction_tokens", 0) if details else timings.get("draft_n", 0)
    return usage["completion_tokens"], drafted, accepted, elapsed


def spec_cases(folder: Path) -> list[tuple[str, Path, list[int], int]]:
    """(name, model, prompt token ids, tokens to generate) of each speculation case."""
    from glm4_local.chat.runtime import Vocabulary
    from glm4_local.chat.setup import ModelFacts
    from glm4_local.core.llama import door

    real = factory.REAL_TOKENIZER.is_file()  # GLM-4's vocabulary: its output layer dominates, as in the 9B
    words = passage_words(real)
    spec = factory.Spec(dtype="f32", shape=SMALL, real_tokenizer=real, extra_tokens=() if real else words,
                        script=passage_script(words))
    factory.build_checkpoint(folder / "passage", spec)
    scripted = convert(str(folder / "passage"), OUT_TYPES["q8_0"], output=folder / "passage-q8_0.gguf").path
    factory.build_checkpoint(folder / "random", factory.Spec(dtype="bf16", shape=SMALL, real_tokenizer=real))
    random_model = convert(str(folder / "random"), OUT_TYPES["q8_0"], output=folder / "random-q8_0.gguf").path

    def vocabulary(model: Path) -> tuple[Any, Vocabulary]:
        loaded = door.load(model, vocab_only=True)
        return loaded, Vocabulary(loaded, ModelFacts.read(model).family)

    loaded, vocab = vocabulary(scripted)
    ids = {vocab.piece(i): i for i in range(loaded.n_vocab())}
    head = vocab.text_tokens("[gMASK]<sop><|user|>\nRepeat this:", special=True)
    passage = [ids[w.encode()] for w in words]
    assistant = vocab.special_ids["<|assistant|>"]
    _, vocab = vocabulary(random_model)
    plain_head = vocab.text_tokens("[gMASK]<sop><|user|>\nContinue:", special=True)
    text = vocab.text_tokens("The quick brown fox jumps over the lazy dog. " * 4 + "Hello world, bonjour le monde.")
    return [("scripted model repeating a 120-token passage of its prompt", scripted,
             [*head, *passage, assistant], len(passage) + 1),
            ("random model continuing text already in its prompt", random_model, [*plain_head, *text, *text[:5]], 128),
            ("random model, text not in its prompt (no drafts to find)", random_model, plain_head, 128)]


def speculation(binary: Path | None, folder: Path, rounds: int) -> None:
    for name, model, prompt, n in spec_cases(folder):
        servers: dict[str, Any] = {}
        try:
            for label, args in (("glm4-local --speculate off", ("--speculate", "off")), ("glm4-local", ())):
                server = Server(model, folder, "--ctx", str(SLOT_CTX), "--parallel", str(SLOTS),
                                "--threads", str(THREADS), *args)
                servers[label] = (server.stop, server.json)
            if binary is not None:
                for label, args in (("llama-server", ()), ("llama-server ngram-simple",
                                                           ("--spec-type", "ngram-simple"))):
                    server = LlamaServer(binary, model, "-c", str(SLOT_CTX * SLOTS), "-np", str(SLOTS),
                                         "-t", str(THREADS), "-tb", str(THREADS), *args)
                    servers[label] = (server.stop, server.json)
            runs: dict[str, list[tuple[int, int, int, float]]] = {label: [] for label in servers}
            for _, json_of in servers.values():
                complete(json_of, prompt, 4)  # warm up
            for _ in range(rounds):
                for label, (_, json_of) in servers.items():
                    runs[label].append(complete(json_of, prompt, n))
        finally:
            for stop, _ in servers.values():
                stop()
        rates = {label: statistics.median(t / s for t, _, _, s in r) for label, r in runs.items()}
        print(f"{name}:")
        for label, r in runs.items():
            tokens, drafted, accepted, _ = r[-1]
            base = rates["llama-server" if label.startswith("llama") else "glm4-local --speculate off"]
            print(f"  {label:28} {rates[label]:7.1f} tok/s ({rates[label] / base:.2f}× without speculation), "
                  f"{tokens} tokens, {accepted} of {drafted} drafted accepted")
        if binary is not None:
            print(f"  glm4-local / llama-server ngram-simple: "
                  f"{rates['glm4-local'] / rates['llama-server ngram-simple']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="only the 4 × 512 model (as --models small)")
    parser.add_argument("--models", default="small,big",
                        help="plain decoding's models: small (4 × 512), big (12 × 1024)")
    parser.add_argument("--streams", default=",".join(map(str, WIDTHS)), help="plain decoding's concurrent requests")
    parser.add_argument("--only", choices=("plain", "spec"))
    parser.add_argument("--starts", type=int, default=1,
                        help="plain decoding: start the servers this many times, --rounds rounds each")
    parser.add_argument("--twin", action="store_true",
                        help="plain decoding: also a second llama-server process, to show how far two alike differ")
    parser.add_argument("--defaults-only", action="store_true",
                        help="plain decoding: only both servers at their defaults (no flash-attention-off variants)")
    parser.add_argument("--stream", action="store_true",
                        help="plain decoding: every reply streamed, as a chat page or an SDK client with stream=True")
    args = parser.parse_args()
    try:
        shapes = [MODELS[m] for m in ("small" if args.small else args.models).split(",")]
        widths = [int(w) for w in args.streams.split(",")]
    except (KeyError, ValueError) as e:
        sys.exit(f"--models takes {', '.join(MODELS)}; --streams numbers, comma-separated ({e})")
    if not args.llama_server.is_file() and args.only != "spec":
        sys.exit(f"{args.llama_server}: no llama-server; build it with benchmarks/build_llama_server.sh "
                 "(or run --only spec, which then measures glm4-local alone)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.only in (None, "plain"):
            if not factory.REAL_TOKENIZER.is_file():
                print("plain: skipped (GLM-4's tokenizer.model not found in ../shared)")
            else:
                plain(args.llama_server, folder, shapes, widths, args.rounds, max(1, args.starts),
                      not args.defaults_only, args.twin, args.stream)
        if args.only in (None, "spec"):
            speculation(args.llama_server if args.llama_server.is_file() else None, folder, args.rounds)


if __name__ == "__main__":
    main()

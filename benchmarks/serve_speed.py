"""`glm4-local serve` speed, each figure a ratio measured in one run:

1. one streamed request through HTTP against bare llama.cpp decode (llama_decode + argmax) on the same
   GGUF and threads;
2. aggregate decode throughput of 1/2/4/8 concurrent requests on a model with GLM-4's real
   151,552-token vocabulary (its output layer makes decoding memory-bound, as with the real 9B);
3. time to first token of turn 10 of a conversation against turn 1 (each slot's prompt cache).

    python benchmarks/serve_speed.py [--tokens 200] [--rounds 3] [--turns 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bare import BareDecoder
from chat_speed import CTX, THREADS, build_model
from helpers import factory
from helpers.serving import Server

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert

REAL_VOCAB_SHAPE = factory.Shape(n_layer=4, n_embd=512, n_head=8, n_head_kv=2, head_dim=64, n_ff=1536, context=8192)
QUESTION = "Tell me about the weather."


def timed_stream(server: Server, messages: list[dict[str, str]], max_tokens: int
                 ) -> tuple[list[float], dict, str]:
    """(arrival time of each content chunk, usage, text) of one streamed chat completion."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    body = {"messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    times, usage, text = [sent], {}, []
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
        if content:
            times.append(time.perf_counter())
            text.append(content)
    connection.close()
    return times, usage, "".join(text)


def http_against_bare(path: Path, workdir: Path, n_tokens: int, rounds: int, threads: int) -> dict[str, float]:
    # without speculation, as the bare loop: this measures what HTTP and the server add to decoding (the scripted
    # model's reply repeats itself, which speculation would turn into a 2x "gain" over the bare loop)
    server = Server(path, workdir, "--ctx", str(CTX), "--threads", str(threads), "--speculate", "off")
    baseline = BareDecoder(path, CTX, threads)
    messages = [{"role": "user", "content": QUESTION}]
    try:
        prompt_tokens = timed_stream(server, messages, 1)[1]["prompt_tokens"]
        from glm4_local.chat.runtime import Vocabulary
        from glm4_local.chat.setup import ModelFacts
        from glm4_local.core.llama import door

        facts = ModelFacts.read(path)
        prompt = Vocabulary(door.load(path, vocab_only=True), facts.family).prompt(facts.template, messages, None)
        assert len(prompt) == prompt_tokens
        ours, bare = [], []
        for _ in range(rounds):  # interleaved, so machine noise hits both alike
            bare.append(baseline.decode_tps(prompt, n_tokens))
            times = timed_stream(server, messages, n_tokens)[0][1:]  # each chunk is one " day" token
            ours.append((len(times) - 1) / (times[-1] - times[0]))
    finally:
        server.stop()
        baseline.close()
    return {"bare_tps": statistics.median(bare), "http_tps": statistics.median(ours),
            "ratio": statistics.median(ours) / statistics.median(bare)}


def whole(server: Server, messages: list[dict[str, str]], max_tokens: int) -> dict:
    """The usage of one chat completion that is not streamed (its client sleeps until the answer)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    return server.json("POST", "/v1/chat/completions", body)[1]["usage"]


def aggregate(path: Path, workdir: Path, n_tokens: int, widths: list[int], rounds: int, streamed: bool,
              threads: int) -> dict[int, tuple[float, float]]:
    """Per width: (tokens per second over all requests, ms per llama_decode call), medians of `rounds`
    interleaved rounds. The second is what llama.cpp itself charges for a wider batch."""
    ask = (lambda s, m, n: timed_stream(s, m, n)[1]) if streamed else whole
    server = Server(path, workdir, "--ctx", "1024", "--parallel", str(max(widths)), "--threads", str(threads))
    rates: dict[int, list[float]] = {w: [] for w in widths}
    call_ms: dict[int, list[float]] = {w: [] for w in widths}
    try:
        whole(server, [{"role": "user", "content": "warm up"}], 8)
        for _ in range(rounds):
            for width in widths:
                before, started = server.metrics(), time.perf_counter()
                with ThreadPoolExecutor(width) as pool:
                    usages = list(pool.map(lambda i: ask(server, [{"role": "user", "content": f"Story {i}."}],
                                                         n_tokens), range(width)))
                elapsed, after = time.perf_counter() - started, server.metrics()
                rates[width].append(sum(u["completion_tokens"] for u in usages) / elapsed)
                calls = after["glm4_local_decode_calls_total"] - before["glm4_local_decode_calls_total"]
                seconds = after["glm4_local_decode_seconds_total"] - before["glm4_local_decode_seconds_total"]
                call_ms[width].append(seconds / calls * 1000)
    finally:
        server.stop()
    return {w: (statistics.median(rates[w]), statistics.median(call_ms[w])) for w in widths}


def ttft_by_turn(path: Path, workdir: Path, turns: int) -> list[tuple[int, int, float]]:
    """(prompt tokens, cached tokens, time to first token) for each turn of one conversation."""
    server = Server(path, workdir, "--ctx", str(CTX), "--threads", str(THREADS))
    messages: list[dict[str, str]] = []
    rows = []
    try:
        for i in range(turns):
            messages.append({"role": "user", "content": f"Question {i}: " + "tell me more about it " * 20})
            times, usage, text = timed_stream(server, messages, 8)
            messages.append({"role": "assistant", "content": text})
            rows.append((usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], times[1] - times[0]))
    finally:
        server.stop()
    return rows


def real_vocab_model(folder: Path) -> Path:
    spec = factory.Spec(dtype="bf16", shape=REAL_VOCAB_SHAPE, real_tokenizer=True)
    factory.build_checkpoint(folder / "real-ckpt", spec)
    return convert(str(folder / "real-ckpt"), OUT_TYPES["q8_0"], output=folder / "real-vocab-q8_0.gguf").path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--streams", default="1,2,4,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = build_model(folder)
        # with every core computing, the server's event loop and this client take time from llama.cpp;
        # with one core fewer, they run beside it, as on a machine with more cores than llama.cpp threads
        for threads in sorted({THREADS, max(1, THREADS - 1)}, reverse=True):
            d = http_against_bare(path, folder, args.tokens, args.rounds, threads)
            print(f"one stream through HTTP, {threads} llama.cpp thread(s) of {THREADS} cores: {d['http_tps']:.1f} "
                  f"tok/s against bare llama_decode + argmax {d['bare_tps']:.1f} tok/s (ratio {d['ratio']:.3f})")
        rows = ttft_by_turn(path, folder, args.turns)
        print("turn  prompt  cached  TTFT")
        for i, (prompt, cached, ttft) in enumerate(rows, 1):
            print(f"{i:4} {prompt:7} {cached:7} {ttft * 1000:8.1f}ms")
        print(f"TTFT turn {len(rows)} / turn 1: {rows[-1][2] / rows[0][2]:.3f}")
        if not factory.REAL_TOKENIZER.is_file():
            print("aggregate: skipped (GLM-4's tokenizer.model not found in ../shared)")
            return
        widths = [int(w) for w in args.streams.split(",")]
        model = real_vocab_model(folder)
        for streamed, threads in ((True, THREADS), (False, THREADS), (True, max(1, THREADS - 1))):
            rates = aggregate(model, folder, 128, widths, args.rounds, streamed, threads)
            base_rate, base_ms = rates[widths[0]]
            kind = "streamed" if streamed else "whole"
            for width, (rate, ms) in rates.items():
                # the share of the wall time spent inside llama_decode: what is left is ours (and the clients')
                busy = rate * ms / 1000 / width
                print(f"{threads} thread(s), {width} concurrent {kind} requests: {rate:7.1f} tok/s in all "
                      f"({rate / base_rate:.2f}× {widths[0]}); llama_decode {ms:5.1f} ms per call "
                      f"({ms / base_ms:.2f}× {widths[0]}), busy {busy:.0%} of the time")


if __name__ == "__main__":
    main()

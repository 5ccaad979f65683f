"""`glm4-local serve --engine`: what the front costs, and what a second engine gives. Aggregate tokens/s of
8 concurrent greedy streams (Chat Completions through our front, or llama-server's own /completion with the
same token ids when it runs alone), each of 128 tokens, rounds interleaved, every figure a ratio measured in
this run:

1. one llama-server alone (no front): the baseline, sent the very requests the front sends (token ids, every
   sampling field), whole;
2. our front in front of that one engine;
3. our front in front of two engines (each as the first, on the same machine: they share its cores).

The model is a q8_0 GGUF with GLM-4's real 151,552-token vocabulary (4 layers × 512). Each engine has 4 slots
and THREADS threads; on a machine with fewer than 2 × THREADS cores the two engines compete for them, and
the second gives little: the line says how many cores there were.

    bash benchmarks/build_llama_server.sh             # once, ~8 minutes on 2 cores
    python benchmarks/engines.py [--llama-server PATH] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import SMALL, stories
from helpers import factory
from helpers.serving import Server
from llama_server import DEFAULT_BINARY, LlamaServer, exit_unless_built

from glm4_local.chat.runtime import Vocabulary
from glm4_local.chat.setup import ModelFacts
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.core.llama import door
from glm4_local.core.llama.jobs import Job
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.server.engine_client import completion_body

STREAMS = 8
SLOTS = 4
SLOT_CTX = 1024
TOKENS = 128

Ask = Callable[[int], int]  # request i → completion tokens


def engine(binary: Path, model: Path, threads: int) -> LlamaServer:
    return LlamaServer(binary, model, "-c", str(SLOT_CTX * SLOTS), "-np", str(SLOTS), "-t", str(threads),
                       "-tb", str(threads))


def alone(server: LlamaServer, prompts: list[list[int]]) -> Ask:
    """The same requests the front makes (prompt ids, sampling fields), sent straight to the engine, whole."""
    def ask(i: int) -> int:
        job = Job(prompts[i], SamplerSettings(temperature=0), TOKENS, frozenset())
        body = {**completion_body(job, TOKENS), "stream": False}
        return int(server.json("POST", "/completion", body)[1]["tokens_predicted"])

    return ask


def fronted(server: Server) -> Ask:
    def ask(i: int) -> int:
        body = {"messages": stories(STREAMS)[i], "max_tokens": TOKENS, "temperature": 0}
        status, answer = server.json("POST", "/v1/chat/completions", body)
        assert status == 200, answer
        return int(answer["usage"]["completion_tokens"])

    return ask


def rate(ask: Ask) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(STREAMS) as pool:
        tokens = sum(pool.map(ask, range(STREAMS)))
    return tokens / (time.perf_counter() - started)


def prompts_of(model: Path) -> list[list[int]]:
    """The token ids our front sends for the same chats (so the engine alone reads the same prompts)."""
    facts = ModelFacts.read(model)
    vocab = Vocabulary(door.load_model(model, header=facts.header, vocab_only=True), facts.family)
    return [vocab.prompt(facts.template, messages, None) for messages in stories(STREAMS)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    exit_unless_built(args.llama_server, factory.REAL_TOKENIZER)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        factory.build_checkpoint(folder / "model", factory.Spec(dtype="bf16", shape=SMALL, real_tokenizer=True))
        model = convert(str(folder / "model"), OUT_TYPES["q8_0"], output=folder / "model-q8_0.gguf").path
        running: list[LlamaServer | Server] = []
        rates: dict[str, list[float]] = {}
        try:
            for _ in range(2):
                running.append(engine(args.llama_server, model, args.threads))
            engines = [server for server in running if isinstance(server, LlamaServer)]
            urls = [f"http://127.0.0.1:{server.port}" for server in engines]
            one = Server(model, folder, "--engine", urls[0])
            running.append(one)
            two = Server(model, folder, "--engine", urls[0], "--engine", urls[1])
            running.append(two)
            cases = {"llama-server alone": alone(engines[0], prompts_of(model)), "front + 1 engine": fronted(one),
                     "front + 2 engines": fronted(two)}
            rates = {name: [] for name in cases}
            for ask in cases.values():  # warm-up: prompts cached in the slots, as in use
                ask(0)
            for _ in range(args.rounds):
                for name, ask in cases.items():
                    rates[name].append(rate(ask))
        finally:
            for server in reversed(running):
                server.stop()
    median = {name: statistics.median(values) for name, values in rates.items()}
    base = median["llama-server alone"]
    print(json.dumps({name: round(value, 1) for name, value in median.items()}), "tok/s (medians)")
    print(f"{STREAMS} streams of {TOKENS} tokens, {SLOTS} slots and {args.threads} threads per engine, "
          f"{os.cpu_count()} cores: front + 1 engine / engine alone {median['front + 1 engine'] / base:.3f}; "
          f"front + 2 engines / front + 1 engine {median['front + 2 engines'] / median['front + 1 engine']:.2f}")


if __name__ == "__main__":
    main()

"""What the chat page costs decoding: tokens/s the page reports for a streamed reply (from its first token
to its last, as shown under each reply) against the same request through the official `openai` client,
on one `glm4-local serve` and model, rounds interleaved. The browser is a real headless Chromium
sharing the machine's cores with the server (which decodes on all of them, its default), as on a laptop.
The page's work is per token (reading the stream) and per draw (at most ten a second), so it weighs
most where decoding is fastest: `--model 300m` (~300M parameters, q8_0, ~90 tokens/s here) and
`--model 100m` (~270 tokens/s) both decode much faster than GLM-4-9B does on a laptop.

    python benchmarks/page_speed.py [--model 300m|100m] [--tokens 300] [--rounds 15]

Goal (issue 18): page tokens/s >= 0.95x the openai client's. The render cost of a 4,000-token reply is
measured by tests/test_page.py (page-render.json in its artefacts).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chat_speed import CTX, SCRIPT, THREADS
from chat_speed import build_model as build_fast_model
from helpers import factory
from helpers.pagedriver import Page, chromium
from helpers.serving import Server

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert

QUESTION = "Tell me about the weather."
# about 300M parameters at q8_0
BIGGER_SHAPE = factory.Shape(n_layer=12, n_embd=1536, n_head=12, n_head_kv=2, head_dim=128, n_ff=4096, context=8192)
LATEST_STATS = """const ids = JSON.parse(localStorage.getItem("glm4-local:conversations") || "[]");
const kept = ids.map((id) => JSON.parse(localStorage.getItem("glm4-local:conversation:" + id)));
kept.sort((a, b) => b.updated - a.updated);
return kept[0].messages.at(-1).glm4_stats;"""


def client_tps(server: Server, max_tokens: int) -> tuple[float, int]:
    """(tokens/s from the first content chunk to the end of the stream, completion tokens)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="glm4", messages=[{"role": "user", "content": QUESTION}],
                                            stream=True, stream_options={"include_usage": True},
                                            max_tokens=max_tokens, temperature=0)
    first, tokens = 0.0, 0
    for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content and not first:
            first = time.perf_counter()
    return tokens / (time.perf_counter() - first), tokens


def page_tps(page: Page) -> tuple[float, int]:
    """(tokens/s as the page shows it under the reply, completion tokens) of one reply in a new conversation."""
    page.find("#new-chat").click()
    page.send(QUESTION)
    page.replied(1, timeout=600)
    stats = page.script(LATEST_STATS)
    return stats["tps"], stats["tokens"]


def set_sampling(page: Page, max_tokens: int) -> None:
    page.find("#open-settings").click()
    for field, value in (("temperature", "0"), ("max_tokens", str(max_tokens))):
        page.find(f"#{field}").clear()
        page.find(f"#{field}").send_keys(value)
    page.find("#settings-ok").click()


def build_bigger_model(folder: Path) -> Path:
    spec = factory.Spec(dtype="bf16", shape=BIGGER_SHAPE, extra_tokens=("Sunny", " day"), script=SCRIPT)
    factory.build_checkpoint(folder / "ckpt", spec)
    return convert(str(folder / "ckpt"), OUT_TYPES["q8_0"], output=folder / "bench-300m-q8_0.gguf").path


MODELS = {"300m": build_bigger_model, "100m": build_fast_model}


def measure(model: str, max_tokens: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = Server(MODELS[model](folder), folder, "--ctx", str(CTX), "--threads", str(THREADS))
        driver = chromium(folder / "profile")
        try:
            page = Page(driver, folder, folder / "downloads")
            page.open(server)
            set_sampling(page, max_tokens)
            client_tps(server, 8)  # warm-up, both ways
            page_tps(page)
            rates: dict[str, list[float]] = {"page": [], "openai": []}
            ways = {"page": lambda: page_tps(page), "openai": lambda: client_tps(server, max_tokens)}
            for round_ in range(rounds):  # interleaved, each first in turn, so machine noise hits both alike
                for way in sorted(ways, reverse=bool(round_ % 2)):
                    tps, tokens = ways[way]()
                    assert tokens == max_tokens, (way, tokens)
                    rates[way].append(tps)
        finally:
            driver.quit()
            server.stop()
    # each round's two runs are next to each other in time: their ratio is less noisy than one of medians
    paired = [page / client for page, client in zip(rates["page"], rates["openai"], strict=True)]
    return {"model": model, "tokens": max_tokens, "rounds": rounds, "threads": THREADS,
            "page_tps": statistics.median(rates["page"]), "openai_tps": statistics.median(rates["openai"]),
            "ratio": statistics.median(paired),
            "per_round": {way: [round(r, 1) for r in found] for way, found in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--model", choices=sorted(MODELS), default="300m",
                        help="the random scripted model decoded (q8_0), by its size")
    args = parser.parse_args()
    result = measure(args.model, args.tokens, args.rounds)
    print(json.dumps(result, indent=2))
    print(f"page / openai client tokens/s, median of the rounds' ratios: {result['ratio']:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()

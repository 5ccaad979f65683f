"""Decode speed of `glm4-local chat` against a bare llama-cpp-python loop, and time-to-first-token
as a conversation grows, with and without reusing the KV cache. Both measured in one run.

    python benchmarks/chat_speed.py [--tokens 200] [--rounds 5] [--turns 12]

The model is a generated GLM-4-shaped GGUF (about 100M parameters, q8_0) whose scripted weights
never emit a stop token, so every run decodes exactly the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bare import BareDecoder
from helpers import factory

from glm4_local.chat.engine import ChatEngine
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.setup import open_engine
from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert

SHAPE = factory.Shape(n_layer=8, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=2816, context=16384)
SCRIPT = (("<|assistant|>", "\n"), ("\n", " day"), (" day", " day"))
THREADS = os.cpu_count() or 2
CTX = 4096


def build_model(folder: Path) -> Path:
    spec = factory.Spec(dtype="f32", shape=SHAPE, extra_tokens=("lookup", "{}", "Sunny", " day"), script=SCRIPT)
    factory.build_checkpoint(folder / "ckpt", spec)
    return convert(str(folder / "ckpt"), OUT_TYPES["q8_0"], output=folder / "bench-q8_0.gguf").path


def engine(path: Path, max_tokens: int) -> ChatEngine:
    return open_engine(path, RuntimeOptions(ctx=CTX, threads=THREADS), {"temperature": 0.0}, max_tokens)


def chat_decode_tps(chat: ChatEngine) -> float:
    chat.runtime.decoder.forget()
    chat.conversation.messages.clear()
    turn = chat.send("Tell me about the weather.")
    for _ in turn.display():
        pass
    return turn.finish().timings.decode_tps


def decode_comparison(path: Path, n_tokens: int, rounds: int) -> dict[str, float]:
    chat = engine(path, n_tokens)
    prompt = chat.prompt_tokens([{"role": "user", "content": "Tell me about the weather."}])
    baseline = BareDecoder(path, CTX, THREADS)
    ours, bare = [], []
    for _ in range(rounds):  # interleaved, so machine noise hits both alike
        bare.append(baseline.decode_tps(prompt, n_tokens))
        ours.append(chat_decode_tps(chat))
    baseline.close()
    cli_tps = cli_decode_tps(path, n_tokens)
    return {"bare_tps": statistics.median(bare), "chat_tps": statistics.median(ours), "cli_tps": cli_tps,
            "ratio": statistics.median(ours) / statistics.median(bare)}


def repl_decode_tps(path: Path, n_tokens: int, home: Path) -> float:
    """Decode speed of the interactive chat, Markdown rendering included, read from its /stats line."""
    import pexpect

    env = {**os.environ, "GLM4_LOCAL_HOME": str(home), "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "glm4_local", "chat", str(path), "--temp", "0", "--max-tokens",
                                           str(n_tokens), "--threads", str(THREADS), "--ctx", str(CTX)],
                          env=env, encoding="utf-8", timeout=300, dimensions=(40, 120))
    child.expect_exact("›")
    child.send("Tell me about the weather.\r")
    child.expect_exact("[cut:")
    child.expect_exact("›")
    child.send("/stats\r")
    child.expect(r"generated \d+ tokens \(([\d.]+) tok/s\)")
    tps = float(child.match.group(1))
    child.expect_exact("›")
    time.sleep(0.2)  # let the line editor take the terminal back before Ctrl-D
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    return tps


def cli_decode_tps(path: Path, n_tokens: int) -> float:
    cli = subprocess.run([sys.executable, "-m", "glm4_local", "chat", str(path), "-p", "Tell me about the weather.",
                          "--json", "--temp", "0", "--max-tokens", str(n_tokens), "--threads", str(THREADS),
                          "--ctx", str(CTX)], capture_output=True, text=True, check=True)
    return float(json.loads(cli.stdout)["timings"]["decode_tokens_per_second"])


def repl_comparison(path: Path, n_tokens: int, rounds: int, home: Path) -> dict[str, float]:
    """The terminal chat against `chat -p`, interleaved, medians."""
    repl, cli = [], []
    for _ in range(rounds):
        cli.append(cli_decode_tps(path, n_tokens))
        repl.append(repl_decode_tps(path, n_tokens, home))
    return {"cli_tps": statistics.median(cli), "repl_tps": statistics.median(repl),
            "ratio": statistics.median(repl) / statistics.median(cli)}


def ttft_by_turn(path: Path, turns: int, reuse_cache: bool) -> list[tuple[int, int, float]]:
    """(prompt tokens, evaluated tokens, time to first token) for each turn of one conversation."""
    chat = engine(path, 8)
    rows = []
    for i in range(turns):
        if not reuse_cache:
            chat.runtime.decoder.forget()
        turn = chat.send(f"Question {i}: " + "tell me more about it " * 20)
        for _ in turn.display():
            pass
        t = turn.finish().timings
        rows.append((t.prompt_tokens, t.evaluated_tokens, t.prefill_seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp))
        d = decode_comparison(path, args.tokens, args.rounds)
        print(f"decode: bare llama_decode + argmax {d['bare_tps']:.1f} tok/s, glm4-local chat engine "
              f"{d['chat_tps']:.1f} tok/s (ratio {d['ratio']:.3f}), chat CLI --json {d['cli_tps']:.1f} tok/s")
        r = repl_comparison(path, args.tokens, args.rounds, Path(tmp))
        print(f"terminal chat (Markdown rendering): {r['repl_tps']:.1f} tok/s against chat -p {r['cli_tps']:.1f} "
              f"tok/s (ratio {r['ratio']:.3f})")
        cached = ttft_by_turn(path, args.turns, reuse_cache=True)
        fresh = ttft_by_turn(path, args.turns, reuse_cache=False)
    print("turn  prompt  evaluated  TTFT(cache)  evaluated  TTFT(no cache)  ratio")
    for i, ((p, e, t), (_, e2, t2)) in enumerate(zip(cached, fresh, strict=True)):
        print(f"{i + 1:4} {p:7} {e:10} {t * 1000:10.1f}ms {e2:10} {t2 * 1000:12.1f}ms  {t / t2:6.3f}")


if __name__ == "__main__":
    main()

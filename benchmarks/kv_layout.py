"""One KV buffer shared by all slots against a buffer per slot (what the decoder chooses with flash attention
and several slots, as llama-server does): milliseconds a generating step of the decoder itself, both layouts
on the same q8_0 model (GLM-4's real vocabulary), 4 slots of 1,024 tokens, rounds interleaved; every figure
a median of the rounds' ratios per-slot / shared (below 1: a buffer per slot is faster).

Cases, with flash attention and without: one stream while the other slots hold their finished conversations
(a server between users), four streams, three streams with an idle slot between busy ones (a buffer each
needs a filler row there to stay one compute pass).

    python benchmarks/kv_layout.py [--rounds 6] [--small] [--model PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import BIG, SLOT_CTX, SLOTS, SMALL, THREADS, TOKENS, real_vocab_q8_0

from glm4_local.core.llama import door
from glm4_local.core.llama.decoder import Decoder, Job
from glm4_local.core.llama.device import ContextSettings
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.core.llama.speculation import SpeculationSettings

CASES = ("1 stream, 3 idle caches", "4 streams", "3 streams, idle slot between")


def prompt(seed: int, length: int = 200) -> list[int]:
    return [151331, 151333, 151336] + [1000 + (seed * 7919 + 13 * i) % 50000 for i in range(length)] + [151337]


def step_ms(decoder: Decoder, prompts: list[list[int]], idle: set[int] = frozenset(), tokens: int = TOKENS) -> float:
    """Milliseconds a generating step once the prompts are read; jobs landing in slots `idle` are cancelled
    as they start (their slots keep what they held)."""
    jobs = [Job(p, SamplerSettings(), tokens, frozenset()) for p in prompts]
    for job in jobs:
        decoder.submit(job)
    decoder.prepare()
    for slot in decoder._slots:
        if slot.seq in idle and slot.job is not None:
            decoder.cancel(slot.job)
    decoder.release_cancelled()
    while decoder.prepare():
        decoder.step()
    decoder.decode_seconds, decoder.decode_calls = 0.0, 0
    while decoder.step():
        pass
    return 1000 * decoder.decode_seconds / max(1, decoder.decode_calls)


def one_round(decoders: dict[tuple[bool, bool], Decoder], seed: int) -> dict[tuple[str, bool, bool], float]:
    """Each case on both layouts, with flash attention and without."""
    found = {}
    for (unified, flash), decoder in decoders.items():
        step_ms(decoder, [prompt(seed * 10 + i) for i in range(SLOTS)], tokens=8)  # every slot holds a conversation
        found[(CASES[0], flash, unified)] = step_ms(decoder, [prompt(seed * 10 + 5)])
        found[(CASES[1], flash, unified)] = step_ms(decoder, [prompt(seed * 10 + 6 + i) for i in range(SLOTS)])
        found[(CASES[2], flash, unified)] = step_ms(decoder, [prompt(seed * 10 + 6 + i) for i in range(SLOTS)],
                                                    idle={1})
    return found


def measure(model_path: Path, name: str, rounds: int) -> None:
    model = door.load_model(model_path)
    decoders = {(unified, flash): Decoder(model, SLOTS, SLOT_CTX, ContextSettings(512, 512, THREADS, unified),
                                          flash_attn=flash, speculation=SpeculationSettings(mode="off"))
                for unified in (True, False) for flash in (True, False)}
    found = [one_round(decoders, seed) for seed in range(rounds)]
    for flash in (True, False):
        for case in CASES:
            shared = statistics.median(r[(case, flash, True)] for r in found)
            own = statistics.median(r[(case, flash, False)] for r in found)
            ratio = statistics.median(r[(case, flash, False)] / r[(case, flash, True)] for r in found)
            print(f"{name}, {case}, flash attention {'on' if flash else 'off'}: ms a step, shared buffer {shared:.2f}, "
                  f"a buffer per slot {own:.2f}; per slot / shared {ratio:.3f}")
    for decoder in decoders.values():
        decoder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--small", action="store_true", help="the 4 × 512 model only")
    parser.add_argument("--model", type=Path, help="an existing GGUF instead of the built ones")
    args = parser.parse_args()
    if args.model:
        measure(args.model, args.model.name, args.rounds)
        return
    with tempfile.TemporaryDirectory() as folder:
        for shape in [SMALL] if args.small else [SMALL, BIG]:
            name, path = real_vocab_q8_0(Path(folder), shape)
            measure(path, name, args.rounds)


if __name__ == "__main__":
    main()

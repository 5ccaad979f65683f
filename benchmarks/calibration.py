"""Step costs measured while the decoder is idle (core/llama/calibration.py): how long measuring every draft size
takes, whether the measured costs agree with what the decoder's own steps of those sizes cost, and how long a
request arriving waits for a measuring step to stop. q8_0 model with GLM-4's real vocabulary (12 × 1024 unless
--small), 4 slots of 1,024 tokens, 2 threads, default drafts (auto, 16 tokens).

1. measuring: every size, `--rounds` times in fresh measurements (seconds in all, and each size's spread);
2. agreement: the decoder's own generating steps over six greedy replies to story prompts (drafts on), against
   the measured cost of each size those steps had;
3. stopping: a job submitted 20 ms into a measuring step of the largest size; milliseconds until it stopped.

    python benchmarks/calibration.py [--rounds 3] [--small] [--model PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import BIG, SLOT_CTX, SLOTS, SMALL, THREADS, real_vocab_q8_0

from glm4_local.core.llama import door
from glm4_local.core.llama.calibration import Calibration
from glm4_local.core.llama.decoder import Decoder, Job
from glm4_local.core.llama.device import ContextSettings
from glm4_local.core.llama.sampling import SamplerSettings
from glm4_local.core.llama.speculation import SpeculationSettings, StepCosts

STOPS = 20  # measuring steps stopped by a job, for the median


def fresh(decoder: Decoder) -> float:
    """Measure every size again from nothing; the seconds it took."""
    decoder.step_costs = StepCosts()
    decoder.calibration = Calibration.of_drafts(decoder.speculation, SLOTS, decoder.kv_unified, decoder.n_batch)
    started = time.perf_counter()
    while decoder.calibrate():
        pass
    return time.perf_counter() - started


def measuring(decoder: Decoder, rounds: int) -> dict[int, list[float]]:
    """Each size's measured seconds, one per round."""
    found: dict[int, list[float]] = {}
    for _ in range(rounds):
        print(f"measuring every size: {fresh(decoder):.2f} s")
        for size in sorted(decoder.step_costs.sizes):
            found.setdefault(size, []).append(decoder.step_costs.cost(size) or 0.0)
    return found


def own_steps(decoder: Decoder) -> dict[int, float]:
    """Each size's cost as the decoder's own steps left it, over six replies with nothing measured first."""
    decoder.step_costs, decoder.calibration = StepCosts(), Calibration(0)
    for n in range(6):
        prompt = [151331, 151333, 151336, *range(2000 + 50 * n, 2020 + 50 * n), 151337]
        decoder.submit(Job(prompt, SamplerSettings(), 128, frozenset()))
        while decoder.has_work():
            decoder.step()
    return {size: decoder.step_costs.cost(size) or 0.0 for size in sorted(decoder.step_costs.sizes)}


def stop_ms(decoder: Decoder) -> float:
    """Milliseconds from a job's submission, 20 ms into a measuring step of the largest size, to its stop."""
    largest = decoder.speculation.draft_max + 1
    decoder.calibration = calibration = Calibration(largest)
    while calibration.next_size != largest:  # on to the largest, the longest to stop
        calibration.measured(0.0, StepCosts())
    stopped = threading.Event()
    worker = threading.Thread(target=lambda: (decoder.calibrate(), stopped.set()))
    worker.start()
    time.sleep(0.02)
    job = Job([151331, 151333], SamplerSettings(), 1, frozenset())
    submitted = time.perf_counter()
    decoder.submit(job)
    stopped.wait()
    waited = time.perf_counter() - submitted
    worker.join()
    decoder.cancel(job)
    decoder.release_cancelled()
    return 1000 * waited


def measure(model_path: Path, name: str, rounds: int) -> None:
    model = door.load_model(model_path)
    decoder = Decoder(model, SLOTS, SLOT_CTX, ContextSettings(512, 512, THREADS, False),
                      speculation=SpeculationSettings())
    found = measuring(decoder, rounds)
    for size, seconds in found.items():
        spread = max(seconds) / min(seconds) - 1 if min(seconds) > 0 else 0.0
        print(f"{name}, {size} tokens: {1000 * statistics.median(seconds):.1f} ms measured "
              f"(rounds within {100 * spread:.0f}%)")
    for size, seconds in own_steps(decoder).items():
        measured = statistics.median(found[size]) if size in found else None
        against = f", measured {1000 * measured:.1f} ms" if measured else ""
        print(f"{name}, {size} tokens: {1000 * seconds:.1f} ms in the decoder's own steps{against}")
    waits = [stop_ms(decoder) for _ in range(STOPS)]
    print(f"{name}: a job submitted during a measuring step of {decoder.speculation.draft_max + 1} tokens waited "
          f"{statistics.median(waits):.2f} ms (median of {STOPS}), at most {max(waits):.2f} ms")
    decoder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="the 4 × 512 model")
    parser.add_argument("--model", type=Path, help="an existing GGUF instead of the built one")
    args = parser.parse_args()
    if args.model:
        measure(args.model, args.model.name, args.rounds)
        return
    with tempfile.TemporaryDirectory() as folder:
        name, path = real_vocab_q8_0(Path(folder), SMALL if args.small else BIG)
        measure(path, name, args.rounds)


if __name__ == "__main__":
    main()

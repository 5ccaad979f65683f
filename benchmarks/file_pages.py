"""A model file held by the page cache in 4 KiB folios against the same file settled in 2 MiB ones
(core/llama/file_pages.py), measured in llama.cpp's own `llama-bench` (mapped weights, its defaults otherwise):
decode (tg) and prompt (pp) tokens/s.

Each round writes two fresh copies of a q8_0 GGUF with GLM-4's real vocabulary 4 KiB at a time (as a copy or a
download leaves a file in the cache: small folios), settles one of them, and runs llama-bench on both, in
alternating order; the ratios are the rounds' medians (settled / small), with the interval the rounds allow.
It also times settle() on the small-folio copy (a re-read) and on the settled one (a check), and says how much
of each copy the kernel mapped in 2 MiB pages.

`--servers`: as a user meets it instead, each round a fresh 4-KiB-written copy served in turn by llama-server,
by `glm4-local serve` (which settles it as it loads) and by llama-server again (now on the settled file), one
stream of 128 greedy tokens, twice each, every server at its defaults.

    bash benchmarks/build_llama_server.sh      # once: builds llama-bench beside llama-server
    python benchmarks/file_pages.py [--models small,big] [--rounds 8] [--servers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from against_llama_server import MODELS, THREADS, TOKENS, median_interval, ours, rate, real_vocab_q8_0, stories, theirs
from helpers import factory
from helpers.pages import small_folio_copy
from llama_server import DEFAULT_BINARY, binary_env, exit_unless_built

from glm4_local.core.llama import file_pages

PROMPT, BENCH_TOKENS = 256, 256
REPETITIONS = 3  # llama-bench's own, averaged inside its one process; the rounds are the separate draws


def llama_bench(binary: Path, model: Path) -> dict[str, float]:
    """tokens/s of llama-bench's prompt (pp) and decode (tg) tests, averaged over its repetitions."""
    command = [str(binary), "-m", str(model), "-p", str(PROMPT), "-n", str(BENCH_TOKENS), "-t", str(THREADS),
               "-r", str(REPETITIONS), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env=binary_env(binary), check=True)
    return {"pp" if row["n_prompt"] else "tg": float(row["avg_ts"]) for row in json.loads(done.stdout)}


def one_round(binary: Path, model: Path, folder: Path, settled_first: bool) -> dict[str, float]:
    small = small_folio_copy(model, folder / "small.gguf")
    settled = small_folio_copy(model, folder / "settled.gguf")
    small_check = file_pages.settle(small, mend=False)
    mended = file_pages.settle(settled)
    checked = file_pages.settle(settled)
    order = [("settled", settled), ("small", small)]
    speeds = {name: llama_bench(binary, path) for name, path in (order if settled_first else order[::-1])}
    return {**{test: speeds["settled"][test] / speeds["small"][test] for test in ("tg", "pp")},
            "small huge share": small_check.huge_before / small_check.span,
            "settled huge share": checked.huge_before / checked.span,
            "reread s/GB": mended.seconds / (mended.reread / 1e9) if mended.reread else float("nan"),
            "check ms": checked.seconds * 1000}


def served_round(server: Path, model: Path, folder: Path) -> dict[str, float]:
    """One stream's tokens/s from llama-server on a fresh small-folio copy, then ours, then llama-server again."""
    copy = small_folio_copy(model, folder / "served.gguf")
    speeds = {}
    for name, start in (("llama-server", lambda: theirs(server, copy)), ("glm4-local", lambda: ours(copy, folder)),
                        ("llama-server after", lambda: theirs(server, copy))):
        stop, ask = start()
        try:
            ask(stories(1)[0], 4)  # warm up
            speeds[name] = statistics.median(rate(ask, stories(1), TOKENS) for _ in range(2))
        finally:
            stop()
    return {"glm4-local / llama-server": speeds["glm4-local"] / speeds["llama-server"],
            "llama-server after / before": speeds["llama-server after"] / speeds["llama-server"],
            "glm4-local / llama-server after": speeds["glm4-local"] / speeds["llama-server after"]}


def report_served(name: str, rounds: list[dict[str, float]]) -> None:
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        low, high, coverage = median_interval(values)
        print(f"{name} served, {key}: {statistics.median(values):.3f} ({low:.3f}-{high:.3f}, {coverage:.0%}); "
              f"rounds: {', '.join(f'{v:.3f}' for v in values)}")


def report(name: str, rounds: list[dict[str, float]]) -> None:
    for test in ("tg", "pp"):
        values = [r[test] for r in rounds]
        low, high, coverage = median_interval(values)
        print(f"{name} {test}: settled / small folios {statistics.median(values):.3f} "
              f"({low:.3f}-{high:.3f}, {coverage:.0%}); rounds: {', '.join(f'{v:.3f}' for v in values)}")
    for key in ("small huge share", "settled huge share", "reread s/GB", "check ms"):
        print(f"{name} {key}: {statistics.median(r[key] for r in rounds):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-bench", type=Path, default=DEFAULT_BINARY.with_name("llama-bench"))
    parser.add_argument("--models", default="small,big")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--servers", action="store_true", help="llama-server and glm4-local serve on a fresh copy")
    args = parser.parse_args()
    exit_unless_built(args.llama_bench, factory.REAL_TOKENIZER)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model in args.models.split(","):
            name, path = real_vocab_q8_0(folder, MODELS[model])
            if args.servers:
                server = args.llama_bench.with_name("llama-server")
                report_served(name, [served_round(server, path, folder) for _ in range(args.rounds)])
            else:
                report(name, [one_round(args.llama_bench, path, folder, i % 2 == 0) for i in range(args.rounds)])


if __name__ == "__main__":
    main()

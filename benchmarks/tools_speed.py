"""What GLM-4's built-in tools cost: a `python` call's overhead (kernel warm, `print(1)`) and the first
call's start-up, sandboxed against the same kernel without a sandbox (measured in the same run,
interleaved); a search plus an mclick over the offline backends with a 10,000-page index.

    python benchmarks/tools_speed.py [--rounds 5] [--calls 200] [--pages 10000]

Goals (issue 16): warm call <= 50 ms, cold start <= 2 s, search + mclick < 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.zimfixtures import write_zim

from glm4_local.tools.browser import Browser
from glm4_local.tools.python_tool import PythonTool
from glm4_local.tools.sandbox import find_sandbox
from glm4_local.tools.search_folder import FolderBackend
from glm4_local.tools.search_zim import ZimBackend

WORDS = ("alpha", "beta", "gamma", "delta", "kernel", "sandbox", "browser", "search", "index", "page", "river",
         "mountain", "city", "music", "code", "data", "model", "token", "context", "window", "memory", "speed",
         "北京", "上海", "模型", "数据", "代码", "音乐")


def kernel_times(data: Path, sandboxed: bool, calls: int) -> tuple[float, float]:
    """(cold start to the first result, median warm `print(1)`) in seconds."""
    sandbox = find_sandbox() if sandboxed else None
    tool = PythonTool(data, sandbox, timeout=30, confirm=None if sandboxed else (lambda code: True))
    try:
        started = time.perf_counter()
        assert tool.run("python", "print(1)")[0].content == "1\n"
        cold = time.perf_counter() - started
        warm = []
        for _ in range(calls):
            started = time.perf_counter()
            tool.run("python", "print(1)")
            warm.append(time.perf_counter() - started)
        return cold, statistics.median(warm)
    finally:
        tool.close()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_pages(folder: Path, pages: int) -> None:
    rng = random.Random(0)
    for i in range(pages):
        sub = folder / f"part{i % 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"page{i}.md").write_text(f"# Page {i}\n\n{text(rng, 300)} unique{i}\n")


def zim_articles(pages: int) -> dict[str, tuple[str, str]]:
    rng = random.Random(0)
    return {f"A/Page_{i}": (f"Page {i}", f"<html><head><title>Page {i}</title></head><body><p>{text(rng, 300)} "
                           f"unique{i}</p></body></html>") for i in range(pages)}


def search_and_click(browser: Browser, rounds: int, pages: int) -> float:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        [found] = browser.run("simple_browser", f'search("kernel sandbox unique{(i * 7919) % pages}")')
        [page] = browser.run("simple_browser", "mclick([0])")
        times.append(time.perf_counter() - started)
        assert found.metadata == "browser_result" and page.metadata.startswith("quote_result"), page
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--pages", type=int, default=10_000)
    args = parser.parse_args()
    report: dict[str, object] = {"sandbox": find_sandbox().kind if find_sandbox() else None}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cold: dict[str, list[float]] = {"sandboxed": [], "unconfined": []}
        warm: dict[str, list[float]] = {"sandboxed": [], "unconfined": []}
        for i in range(args.rounds):  # interleaved: the machine's drift hits both alike
            for kind in ("sandboxed", "unconfined"):
                if kind == "sandboxed" and find_sandbox() is None:
                    continue
                c, w = kernel_times(root / f"{kind}-{i}", kind == "sandboxed", args.calls)
                cold[kind].append(c)
                warm[kind].append(w)
        for kind in cold:
            if cold[kind]:
                report[f"python_cold_start_s_{kind}"] = round(statistics.median(cold[kind]), 3)
                report[f"python_warm_call_ms_{kind}"] = round(statistics.median(warm[kind]) * 1000, 2)
        if cold["sandboxed"]:
            report["sandbox_ratio_cold"] = round(statistics.median(cold["sandboxed"]) /
                                                 statistics.median(cold["unconfined"]), 3)
            report["sandbox_ratio_warm"] = round(statistics.median(warm["sandboxed"]) /
                                                 statistics.median(warm["unconfined"]), 3)
        write_pages(root / "docs", args.pages)
        started = time.perf_counter()
        folder = FolderBackend(root / "docs", root / "index")
        report["folder_first_index_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        folder = FolderBackend(root / "docs", root / "index")
        report["folder_reopen_unchanged_s"] = round(time.perf_counter() - started, 2)
        report["folder_search_mclick_s"] = round(search_and_click(Browser(folder), args.rounds * 4, args.pages), 4)
        zim = ZimBackend(write_zim(root / "pages.zim", zim_articles(args.pages)))
        report["zim_search_mclick_s"] = round(search_and_click(Browser(zim), args.rounds * 4, args.pages), 4)
        report["pages"] = args.pages
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

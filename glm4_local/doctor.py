"""`glm4-local doctor`: what this machine's llama.cpp can do, and what GLM-4-9B needs."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
GLM4_9B_PARAMS = 9.40e9
# bytes per weight of each GGUF type for GLM-4-9B (k-quant mixes measured by llama.cpp's quantizer)
BITS_PER_WEIGHT = {"Q4_K_M": 4.89, "Q5_K_M": 5.70, "Q6_K": 6.56, "Q8_0": 8.50, "F16": 16.0}
# f16 KV cache per token: 40 layers x 2 (K, V) x 2 KV heads x 128 dims x 2 bytes
KV_BYTES_PER_TOKEN = 40 * 2 * 2 * 128 * 2
TRAINED_CONTEXT = 131072
BACKENDS = ("CUDA", "METAL", "VULKAN", "HIP", "SYCL")


@dataclass(frozen=True)
class Report:
    llama_cpp_python: str
    system_info: str
    gpu_offload: bool
    backends: list[str]
    cpu_features: list[str]
    ram_total: int | None
    ram_available: int | None


def memory() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes, from /proc/meminfo or sysconf."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        values = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values.get("MemTotal"), values.get("MemAvailable")
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, None
    except (ValueError, OSError, AttributeError):
        return None, None


def collect() -> Report:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    features = sorted({m.group(1) for m in re.finditer(r"([A-Z0-9_]+) = 1", info)})
    backends = [b for b in BACKENDS if re.search(rf"\b{b}\b", info.upper())]
    total, available = memory()
    return Report(llama_cpp.__version__, info.strip(), bool(llama_cpp.llama_supports_gpu_offload()), backends,
                  features, total, available)


def fits(budget: int) -> list[tuple[str, float, int]]:
    """(type, model GB, largest context in tokens that fits `budget` bytes), largest context 0 if none."""
    rows = []
    for name, bits in BITS_PER_WEIGHT.items():
        weights = GLM4_9B_PARAMS * bits / 8
        spare = budget - weights - 0.6e9  # compute buffers and runtime overhead
        ctx = int(min(TRAINED_CONTEXT, max(0, spare) // KV_BYTES_PER_TOKEN)) // 1024 * 1024
        rows.append((name, weights / 1e9, ctx))
    return rows


def reinstall_lines() -> dict[str, str]:
    base = f'pip install --force-reinstall --no-cache-dir "{LLAMA_CPP_PYTHON}"'
    return {
        "CUDA": f'CMAKE_ARGS="-DGGML_CUDA=on" {base}',
        "Metal": f'CMAKE_ARGS="-DGGML_METAL=on" {base}',
    }


def render(report: Report) -> list[str]:
    gb = 1e9
    lines = [
        f"llama-cpp-python  {report.llama_cpp_python} on {platform.system()} {platform.machine()}",
        f"CPU features      {' '.join(report.cpu_features) or 'none reported'}",
        f"GPU offload       {'yes (' + ', '.join(report.backends) + ')' if report.gpu_offload else 'no (CPU only)'}",
    ]
    if report.ram_total:
        avail = f", {report.ram_available / gb:.1f} GB available" if report.ram_available else ""
        lines.append(f"RAM               {report.ram_total / gb:.1f} GB{avail}")
        budget = report.ram_available or report.ram_total
        lines.append("GLM-4-9B in this RAM (model size, largest context):")
        for name, size, ctx in fits(budget):
            verdict = f"up to {ctx:,} tokens" if ctx else "does not fit"
            lines.append(f"  {name:7} {size:5.1f} GB   {verdict}")
    if not report.gpu_offload:
        lines.append("To offload to a GPU, reinstall llama-cpp-python with it compiled in:")
        for name, line in reinstall_lines().items():
            lines.append(f"  {name + ':':7} {line}")
    return lines

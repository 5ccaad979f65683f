"""What this machine runs a model on, and what to choose for it: the one place that knows (as
llama.cpp's own parameter fitting does). Doctor reports it, the context plan sizes against its memory,
the loader and the decoder take their settings from it.

What llama.cpp was built with comes through the door (door.system_info, door.gpu_offload_available);
free memory from /proc/meminfo (RAM) or nvidia-smi (a discrete NVIDIA GPU's).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glm4_local.core.llama import door

if TYPE_CHECKING:
    import gguf

BACKENDS = ("CUDA", "METAL", "VULKAN", "HIP", "SYCL")  # llama.cpp's GPU backends, as its system info names them


@dataclass(frozen=True)
class Memory:
    """Free memory where the model will live, in bytes, and what it is ("RAM", "GPU memory")."""

    free: int | None
    kind: str = "RAM"
    # whether flash attention costs speed there. Measured on a 2-core CPU (benchmarks/flash_attention.py,
    # GLM-4's vocabulary and head shape): prompts read 1.05-1.57× faster with it at 512-8,192 tokens, decoding
    # 0.93-1.02×, and `serve` with 4 slots 1.05-1.3× faster; its distributions differ from attention without
    # it by half of what q8_0 itself costs (KL 0.9-1.2e-3 against 1.8-2.1e-3). On a GPU assumed the same
    # until measured. So: on, as llama-server's "auto" does
    flash_attention_slower: bool = False


@dataclass(frozen=True)
class ContextSettings:
    """How a llama.cpp context is made here (the decoder's settings besides the context and the slots)."""

    n_batch: int  # tokens a prompt is read in at once
    n_ubatch: int  # tokens one compute pass takes
    threads: int
    kv_unified: bool = True  # one KV buffer for all sequences; False: a buffer per sequence

    def params(self, ll: Any, slots: int, slot_ctx: int, flash_attn: bool, type_k: gguf.GGMLQuantizationType | None,
               type_v: gguf.GGMLQuantizationType | None) -> Any:
        """llama_context_params for `slots` sequences of `slot_ctx` tokens (`ll`: llama_cpp)."""
        params = ll.llama_context_default_params()
        params.n_ctx = slot_ctx * slots
        params.n_seq_max = slots
        params.kv_unified = self.kv_unified
        params.n_batch = max(1, min(self.n_batch, slot_ctx * slots))
        params.n_ubatch = max(1, min(self.n_ubatch, params.n_batch))
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        for name, qtype in (("type_k", type_k), ("type_v", type_v)):
            if qtype is not None:
                setattr(params, name, int(qtype))
        return params


@dataclass(frozen=True)
class Device:
    system_info: str  # llama.cpp's own line about the build and the CPU
    gpu_offload: bool  # llama.cpp here can put layers on a GPU
    backends: tuple[str, ...]  # its GPU backends
    cpu_features: tuple[str, ...]  # the CPU features it uses (AVX2, NEON, ...)
    cores: int

    @property
    def unified_memory(self) -> bool:
        """The GPU shares the machine's RAM (Apple silicon, through Metal)."""
        return "METAL" in self.backends

    def gpu_layers(self, asked: int | str) -> int:
        """llama.cpp's n_gpu_layers for --gpu-layers N, 'all' or 'auto' (-1: all)."""
        if asked == "all":
            return -1
        if asked == "auto":
            return -1 if self.gpu_offload else 0
        return int(asked)

    def threads(self, asked: int | None = None) -> int:
        return asked or self.cores

    def memory(self, offloaded: bool) -> Memory:
        """Where the weights and KV cache go: a discrete GPU's free memory when layers are offloaded to it,
        else the RAM (with unified memory the two are one)."""
        if offloaded and not self.unified_memory:
            return Memory(gpu_free(), "GPU memory")
        total, available = ram()
        return Memory(available if available is not None else (int(total * 0.7) if total else None), "RAM")

    def context_settings(self, batch: int, threads: int | None, slots: int = 1) -> ContextSettings:
        """A whole prompt batch in one compute pass (measured fastest on a CPU; on a GPU not measured yet,
        so it is the same there). Several slots get a KV buffer each, as llama-server's do: a sequence's
        attention then spans its own cells, not the other slots' (measured on a 2-core CPU,
        benchmarks/kv_layout.py: four streams' steps 0.94-0.96× as long, with flash attention or without; one
        stream beside three idle slots' caches 0.91-1.02×; an idle slot between busy ones, given a filler row,
        0.97-1.03×)."""
        return ContextSettings(batch, batch, self.threads(threads), kv_unified=slots == 1)


@functools.cache
def this_machine() -> Device:
    info = door.system_info()
    features = tuple(sorted({m.group(1) for m in re.finditer(r"([A-Z0-9_]+) = 1", info)}))
    backends = tuple(b for b in BACKENDS if re.search(rf"\b{b}\b", info.upper()))
    return Device(info, door.gpu_offload_available(), backends, features, max(1, os.cpu_count() or 2))


def _meminfo() -> tuple[int | None, int | None]:
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None, None
    return values.get("MemTotal"), values.get("MemAvailable")


def ram() -> tuple[int | None, int | None]:
    """(total, available) RAM, from /proc/meminfo or sysconf (available unknown there)."""
    total, available = _meminfo()
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None, None
    return total, available


def gpu_free() -> int | None:
    """Free memory of the first NVIDIA GPU (nvidia-smi), if there is one to ask."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    try:
        out = subprocess.run([program, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None

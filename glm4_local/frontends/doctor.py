"""`glm4-local doctor`: what this machine's llama.cpp can do, and what the flagship model needs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from glm4_local.chat.context_plan import largest_contexts
from glm4_local.chat.models import resolve_model, searched
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.session import sessions_dir
from glm4_local.chat.setup import ModelFacts
from glm4_local.convert.outtypes import DEFAULT_OUT_TYPE, out_type_for_file_type
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.families.registry import FAMILIES
from glm4_local.core.llama import door, file_pages, huge_pages
from glm4_local.core.llama.device import ram, this_machine
from glm4_local.core.paths import store_dir
from glm4_local.store.catalog import DEFAULT_MODEL
from glm4_local.store.pull import HEADER_ROOM
from glm4_local.tools.extras import EXTRAS
from glm4_local.tools.sandbox import Limits, check_sandbox, find_sandbox, sandbox_help


@dataclass(frozen=True)
class Report:
    llama_cpp_python: str
    system_info: str
    gpu_offload: bool
    backends: list[str]
    cpu_features: list[str]
    ram_total: int | None
    ram_available: int | None
    cores: int
    threads: int  # what chat and serve use by default
    disk_free: int | None  # in the model store (or the nearest existing folder above it)
    models_searched: str
    sessions: Path
    sandbox: str  # where the python tool's code would run, and what a sandboxed print(1) gave
    sandbox_bounds: list[str]  # which limits hold there, and how
    extras: dict[str, list[str]]  # optional feature -> its packages, with versions or "missing"
    model_contexts: str | None = None  # for the model found: the largest context per KV type
    cpu_repacking: str = "on"  # whether llama.cpp's extra CPU weight buffers are used, and why
    huge_pages: str = ""  # whether --huge-pages can put the weights in 2 MiB pages here
    model_pages: str = ""  # whether a model mapped from the store lies in 2 MiB pages (a probe file written there)


def collect() -> Report:
    device = this_machine()
    total, available = ram()
    return Report(door.version(), device.system_info, device.gpu_offload, list(device.backends),
                  list(device.cpu_features), total, available, os.cpu_count() or 1,
                  device.threads(RuntimeOptions().threads), _free_disk(store_dir()), searched(),
                  sessions_dir(), *_sandbox(), {extra: _versions(names) for extra, names in EXTRAS.items()},
                  _model_contexts(available or total), door.cpu_repacking()[1],
                  huge_pages.advice(huge_pages.thp_mode()), model_pages(store_dir()))


def _model_contexts(free: int | None) -> str | None:
    """The largest context per KV type for the model chat would open (none found: None)."""
    try:
        facts = ModelFacts.read(resolve_model(None))
    except Glm4LocalError:
        return None
    if free is None:
        return f"{facts.path.name}: free memory unknown"
    found = largest_contexts(facts.family, facts.hparams, facts.path.stat().st_size, free)
    sizes = " / ".join(f"{kv} {n:,}" for kv, n in found.items())
    return f"{facts.path.name}: largest context with KV {sizes} tokens (trained {facts.hparams.context_length:,})"


def long_variant_lines(free: int | None, family: ModelFamily = FAMILIES[0]) -> list[str]:
    """What the million-token variant needs, per KV type, and what this much memory takes of it."""
    h = family.flagship_long
    if h is None:
        return []
    need = {kv: family.kv_cache_bytes(h, h.context_length, q, q) for kv, q in
            (("f16", door.CACHE_TYPES["f16"]), ("q8_0", door.CACHE_TYPES["q8_0"]), ("q4_0", door.CACHE_TYPES["q4_0"]))}
    lines = [f"{h.context_length:,}-token variant (-1m): its KV cache takes " +
             " / ".join(f"{n / 2**30:.1f} GiB {kv}" for kv, n in need.items())]
    if free:
        weights = int(family.flagship_parameters * family.flagship_bits_per_weight[DEFAULT_OUT_TYPE.file_type] / 8)
        found = largest_contexts(family, h, weights, free)
        lines.append(f"  here, with {DEFAULT_OUT_TYPE.label} weights: up to " +
                     " / ".join(f"{n:,} ({kv})" for kv, n in found.items()) + " tokens")
    return lines


def _sandbox() -> tuple[str, list[str]]:
    """The sandbox, tried for real (a sandboxed `print(1)` as the kernel is started), and its bounds."""
    sandbox = find_sandbox()
    if sandbox is None:
        return f"none: --python is refused ({sandbox_help()})", []
    tried = check_sandbox(sandbox)
    if not tried.ok:
        return (f"{sandbox.kind} ({sandbox.program}) FAILED: a sandboxed print(1) gave "
                f"{tried.output or 'nothing'!r}; --python will not work"), []
    return (f"{sandbox.kind} ({sandbox.program}): a sandboxed print(1) printed 1; --python runs the model's code "
            "with no network, no home folder"), sandbox.bounds(Limits())


def _versions(names: tuple[str, ...]) -> list[str]:
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return found


def _existing(folder: Path) -> Path | None:
    """`folder`, or the nearest existing folder above it (where it will be made)."""
    return next((candidate for candidate in (folder, *folder.absolute().parents) if candidate.is_dir()), None)


def _free_disk(folder: Path) -> int | None:
    existing = _existing(folder)
    try:
        return None if existing is None else shutil.disk_usage(existing).free
    except OSError:
        return None


def model_pages(store: Path) -> str:
    """doctor's line: whether a model kept in `store` is mapped in 2 MiB pages once loading has settled it."""
    folder = _existing(store)
    if folder is None:
        return ""
    huge, why = file_pages.folder_keeps_huge_folios(folder)
    if huge:
        return f"2 MiB: files in {folder} are {why}, so loading settles a mapped model there in 2 MiB pages"
    if huge is None:
        return f"unknown: no probe file could be read in {folder} ({why})"
    instead = "; --huge-pages reads the weights into 2 MiB pages instead" \
        if huge_pages.available(huge_pages.thp_mode()) else ""
    return f"4 KiB: files in {folder} are {why}, so a mapped model there lies in 4 KiB pages{instead}"


def fits(budget: int, family: ModelFamily = FAMILIES[0]) -> list[tuple[str, float, int]]:
    """(type, model GB, largest context in tokens that fits `budget` bytes with an f16 KV cache, by the
    same plan chat and serve use), largest context 0 if none."""
    rows = []
    for file_type, bits in family.flagship_bits_per_weight.items():
        weights = int(family.flagship_parameters * bits / 8)
        ctx = largest_contexts(family, family.flagship, weights, budget)["f16"]
        rows.append((out_type_for_file_type(file_type).label, weights / 1e9, ctx))
    return rows


def reinstall_lines(system: str | None = None) -> dict[str, str]:
    """How to rebuild llama-cpp-python with GPU offload, for the GPUs this operating system has."""
    base = f'pip install --force-reinstall --no-cache-dir "llama-cpp-python=={door.version()}"'
    system = system or platform.system()
    lines = {"CUDA": f'CMAKE_ARGS="-DGGML_CUDA=on" {base}'} if system != "Darwin" else {}
    if system == "Darwin":
        lines["Metal"] = f'CMAKE_ARGS="-DGGML_METAL=on" {base}'
    return lines


def conversion_disk_need(family: ModelFamily = FAMILIES[0]) -> tuple[int, int]:
    """(all, temporary) free disk that converting the flagship to the default type needs: the 16-bit
    temporary file the quantizer reads, plus the output beside it."""
    temporary = family.flagship_parameters * 2
    output = family.flagship_parameters * family.flagship_bits_per_weight[DEFAULT_OUT_TYPE.file_type] / 8
    return int(temporary + output), int(temporary)


def render(report: Report) -> list[str]:
    gb = 1e9
    lines = [
        f"llama-cpp-python  {report.llama_cpp_python} on {platform.system()} {platform.machine()}",
        f"CPU features      {' '.join(report.cpu_features) or 'none reported'}",
        f"Weight repacking  {report.cpu_repacking}",
        *([f"Huge pages        {report.huge_pages}"] if report.huge_pages else []),
        *([f"Model file pages  {report.model_pages}"] if report.model_pages else []),
        f"GPU offload       {'yes (' + ', '.join(report.backends) + ')' if report.gpu_offload else 'no (CPU only)'}",
    ]
    if report.ram_total:
        avail = f", {report.ram_available / gb:.1f} GB available" if report.ram_available else ""
        lines.append(f"RAM               {report.ram_total / gb:.1f} GB{avail}")
        budget = report.ram_available or report.ram_total
        lines.append(f"{FAMILIES[0].name} in this RAM (model size, largest context):")
        for name, size, ctx in fits(budget):
            verdict = f"up to {ctx:,} tokens" if ctx else "does not fit"
            lines.append(f"  {name:7} {size:5.1f} GB   {verdict}")
    if report.model_contexts:
        lines.append(f"Model             {report.model_contexts}")
    lines += long_variant_lines(report.ram_available or report.ram_total)
    lines.append(f"CPU               {report.cores} cores; chat uses {report.threads} threads (--threads)")
    if report.disk_free is not None:
        need, temporary = conversion_disk_need()
        pull_gb = DEFAULT_MODEL.sizes_gb[DEFAULT_MODEL.default_quant] + HEADER_ROOM / gb  # repaired in place
        verdict = "enough" if report.disk_free >= need else "not enough"
        lines.append(f"Disk              {report.disk_free / gb:.1f} GB free in the model store; converting "
                     f"{FAMILIES[0].name} to {DEFAULT_OUT_TYPE.name} needs about {need / gb:.0f} GB, "
                     f"{temporary / gb:.0f} GB of it temporary ({verdict}); pulling it needs about {pull_gb:.1f} GB")
    lines.append(f"Models            looked for in {report.models_searched}")
    lines.append(f"Sessions          autosaved in {report.sessions}")
    lines.append(f"Sandbox           {report.sandbox}")
    lines += [f"  limits          {bound}" for bound in report.sandbox_bounds]
    for extra, packages in report.extras.items():
        missing = any(p.endswith(" missing") for p in packages)
        hint = f'  (pip install "glm4-local[{extra}]")' if missing else ""
        lines.append(f"Tools [{extra}]{' ' * (10 - len(extra))}{', '.join(packages)}{hint}")
    if not report.gpu_offload:
        lines.append("To offload to a GPU, reinstall llama-cpp-python with it compiled in:")
        for name, line in reinstall_lines().items():
            lines.append(f"  {name + ':':7} {line}")
    return lines


def show(out: Console) -> None:
    """`glm4-local doctor`: the report, a line at a time."""
    for line in render(collect()):
        out.print(line, markup=False)

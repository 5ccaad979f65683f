"""What this machine runs a model on (core/llama/device.py): the one place doctor, the context plan and
the loader ask."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import factory
from helpers.serving import Server

from glm4_local.chat.options import parse_huge_pages
from glm4_local.core.llama import door, huge_pages
from glm4_local.core.llama.device import Device, Memory, ram, this_machine


def device(*backends: str, offload: bool = True, cores: int = 8) -> Device:
    return Device("", offload, backends, (), cores)


def test_gpu_layers_follow_what_llama_cpp_can_offload() -> None:
    assert device("CUDA").gpu_layers("auto") == -1 and device(offload=False).gpu_layers("auto") == 0
    assert device(offload=False).gpu_layers("all") == -1 and device("CUDA").gpu_layers(12) == 12


def test_memory_is_the_gpus_only_for_a_discrete_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"  # a stand-in that answers as nvidia-smi does: free MiB per GPU
    smi.write_text("#!/bin/sh\necho 2048\necho 4096\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert device("CUDA").memory(offloaded=True) == Memory(2048 * 2**20, "GPU memory")  # the first GPU
    assert device("METAL").memory(offloaded=True).kind == "RAM"  # Apple silicon: one memory for both
    assert device("CUDA").memory(offloaded=False).kind == "RAM"
    smi.unlink()
    assert device("CUDA").memory(offloaded=True).free is None  # nothing to ask: unknown, not a guess


def test_this_machine_is_what_llama_cpp_says() -> None:
    here = this_machine()
    assert here.gpu_offload == door.gpu_offload_available() and here.system_info == door.system_info()
    assert here.cores >= 1 and here.threads() == here.cores and here.threads(3) == 3
    settings = here.context_settings(512, None)
    assert (settings.n_batch, settings.n_ubatch, settings.threads, settings.kv_unified) == (512, 512, here.cores, True)
    assert not here.context_settings(512, 2, slots=4).kv_unified  # several slots: a KV buffer each, as llama-server
    total, available = ram()
    assert total and (available is None or 0 < available <= total)


@pytest.mark.parametrize(("info", "chosen", "repacking"), [
    ("CPU : AVX2 = 1 | AVX512 = 1 | REPACK = 1", None, True),
    ("CPU : AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1", None, False),  # llama.cpp's AMX buffer would come first
    ("CPU : AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1", "1", True),
    ("CPU : AVX2 = 1 | REPACK = 1", "off", False),
])
def test_weight_repacking_is_off_on_amx_cpus_unless_asked(monkeypatch: pytest.MonkeyPatch, info: str,
                                                          chosen: str | None, repacking: bool) -> None:
    monkeypatch.setattr(door, "system_info", lambda: info)
    if chosen is None:
        monkeypatch.delenv(door.REPACK_ENV, raising=False)
    else:
        monkeypatch.setenv(door.REPACK_ENV, chosen)
    door.cpu_repacking.cache_clear()
    try:
        assert door.cpu_repacking()[0] is repacking
    finally:
        door.cpu_repacking.cache_clear()


@pytest.mark.parametrize("chosen", ["0", "1"])
def test_llama_cpp_puts_the_weights_where_the_choice_says(make_gguf: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    """Loaded, not run (a q8_0 decode in llama.cpp's AMX buffer is what crashes where it crashes). q4_0: the type
    llama.cpp repacks on AVX2, ARM's dot products and AMX alike (q8_0 it leaves alone on AVX2 without AMX)."""
    info = door.system_info()
    if "REPACK = 1" not in info or not re.search(r"\b(AVX2|DOTPROD|MATMUL_INT8|AMX_INT8) = 1", info):
        pytest.skip("this llama.cpp build or CPU has no extra CPU buffer for q4_0 weights")
    model = make_gguf("q4_0", shape=factory.Shape(n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512))
    monkeypatch.setenv(door.REPACK_ENV, chosen)
    door.cpu_repacking.cache_clear()
    lines: list[str] = []
    try:
        with door.listening(lines.append):
            door.load_model(model)
    finally:
        door.cpu_repacking.cache_clear()
    extra = [line for line in lines if re.search(r"\b(AMX|CPU_REPACK) model buffer size", line)]
    assert bool(extra) is (chosen == "1")


@pytest.mark.parametrize(("mmap", "mlock", "said"), [(True, False, "mmap"), (False, False, "none"),
                                                      (True, True, "mmap+mlock"), (False, True, "mlock")])
def test_the_mmap_and_mlock_choices_reach_llama_cpp(make_gguf: Callable[..., Path], mmap: bool, mlock: bool,
                                                    said: str) -> None:
    """`--no-mmap` and `--mlock` as llama.cpp hears them: its load line names the mode it loads in."""
    lines: list[str] = []
    with door.listening(lines.append):
        door.load_model(make_gguf("f32", dtype="f32"), use_mmap=mmap, use_mlock=mlock)
    assert next(line for line in lines if "load_mode = " in line).rstrip().endswith(f"(load_mode = {said})")


@pytest.mark.parametrize(("mode_line", "mode", "advice"), [
    (None, None, "none here"),
    ("always madvise [never]\n", "never", "off in the kernel (transparent huge pages: never)"),
    ("[always] madvise never\n", "always", "--huge-pages reads the weights into 2 MiB pages"),
    ("always [madvise] never\n", "madvise", "--huge-pages reads the weights into 2 MiB pages"),
])
def test_huge_pages_follow_the_kernel_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode_line: str | None,
                                           mode: str | None, advice: str) -> None:
    """doctor's line and what `--huge-pages` says where the kernel has none, from its sysfs line."""
    sysfs = tmp_path / "enabled"
    if mode_line is not None:
        sysfs.write_text(mode_line)
    monkeypatch.setattr(huge_pages, "THP_MODE", sysfs)
    assert huge_pages.thp_mode() == mode  # this process may have them (a container could turn them off)
    assert huge_pages.advice(mode).startswith(advice)
    if huge_pages.available(mode):
        assert parse_huge_pages(True) is True
    else:
        with pytest.raises(ValueError, match="needs the kernel's transparent huge pages, which "):
            parse_huge_pages(True)
    assert parse_huge_pages(False) is False


HUGE_PAGES_OF_A_LOAD = """
import sys
from pathlib import Path
from glm4_local.core.llama import door, huge_pages
model = door.load_model(Path(sys.argv[1]), use_mmap=False, huge_pages=sys.argv[2] == "huge")
print(huge_pages.huge_page_bytes())
"""


def test_huge_pages_hold_the_weights(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    """Where the kernel has them: the weights read with `huge_pages` lie in 2 MiB pages (the process's anonymous
    huge pages hold at least half the model), read without it they do not (in "madvise" mode); and
    `serve --huge-pages` holds them so."""
    mode = huge_pages.thp_mode()
    if not huge_pages.available(mode):
        pytest.skip(huge_pages.advice(mode))
    model = make_gguf("f32", dtype="f32", shape=factory.Shape(n_embd=512, n_head=8, n_head_kv=2, head_dim=64,
                                                                n_ff=2048))
    weights = model.stat().st_size
    assert weights > 16 << 20

    def huge_bytes(how: str) -> int:
        out = subprocess.run([sys.executable, "-c", HUGE_PAGES_OF_A_LOAD, str(model), how], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        return int(out.split()[-1])

    assert huge_bytes("huge") >= weights // 2
    if mode == "madvise":  # under "always" the kernel gives read weights huge pages unasked
        assert huge_bytes("read") < weights // 2
    server = Server(model, tmp_path, "--ctx", "256", "--huge-pages")
    try:
        served = huge_pages.huge_page_bytes(server.process.pid)
    finally:
        server.stop()
    assert served >= weights // 2

"""What this machine runs a model on (core/llama/device.py): the one place doctor, the context plan and
the loader ask."""

from __future__ import annotations

from pathlib import Path

import pytest

from glm4_local.core.llama import door
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
    total, available = ram()
    assert total and (available is None or 0 < available <= total)

"""Finding checkpoints: folders and the local Hugging Face cache, never the network."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import factory

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.convert.source import cached_snapshot, hub_cache_dir, resolve_source
from glm4_local.core.errors import CheckpointError, SourceError
from glm4_local.core.families.family import ModelSpec
from glm4_local.core.families.glm4 import GLM4_9B


def make_cache_entry(cache: Path, repo_id: str, revisions: list[str], main: str | None) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for rev in revisions:
        (repo / "snapshots" / rev).mkdir(parents=True)
        time.sleep(0.01)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(main + "\n")
    return repo


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "b"))
    assert hub_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub_cache_dir() == tmp_path / "b" / "hub"
    monkeypatch.delenv("HF_HOME")
    assert hub_cache_dir() == Path(os.path.expanduser("~/.cache/huggingface/hub"))


def test_refs_main_is_honoured(tmp_path: Path) -> None:
    repo = make_cache_entry(tmp_path, "THUDM/glm-4-9b-chat", ["aaa", "bbb"], main="aaa")
    assert cached_snapshot("THUDM/glm-4-9b-chat", tmp_path) == repo / "snapshots" / "aaa"


def test_without_refs_the_newest_snapshot_is_used(tmp_path: Path) -> None:
    repo = make_cache_entry(tmp_path, "THUDM/glm-4-9b-chat", ["old", "new"], main=None)
    assert cached_snapshot("THUDM/glm-4-9b-chat", tmp_path) == repo / "snapshots" / "new"


def test_cached_repo_id_converts_with_repo_name(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])
    repo = make_cache_entry(cache, "THUDM/glm-4-tiny-chat", ["0123abc"], main="0123abc")
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.rmdir()
    snapshot.symlink_to(make_checkpoint(), target_is_directory=True)
    assert resolve_source("THUDM/glm-4-tiny-chat") == snapshot
    result = convert("THUDM/glm-4-tiny-chat", OUT_TYPES["q8_0"], models_dir=tmp_path / "models")
    assert result.path == tmp_path / "models" / "glm-4-tiny-chat-Q8_0.gguf"


def test_uncached_repo_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_hub(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(SourceError, match=r"downloading needs huggingface_hub: pip install huggingface_hub"):
        resolve_source("THUDM/not-here", download=True)


def test_download_asks_only_for_weights_configs_and_tokenizer(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    hub = pytest.importorskip("huggingface_hub")
    seen: dict[str, object] = {}

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        seen.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    assert resolve_source("THUDM/glm-4-9b-chat", download=True) == tmp_path
    assert seen["repo_id"] == "THUDM/glm-4-9b-chat"
    assert not any(p.endswith(".py") or ".bin" in p for p in seen["allow_patterns"])  # type: ignore[union-attr]
    assert "tokenizer.model" in seen["allow_patterns"]  # type: ignore[operator]


def test_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SourceError, match="not a folder"):
        resolve_source(str(tmp_path / "model.safetensors"))


@pytest.mark.skipif(not factory.REFERENCE.is_dir(), reason="../shared/glm4-reference absent")
@pytest.mark.parametrize("folder,kv,base,context", [
    ("glm-4-9b-chat", 2, 5e6, 131072), ("glm-4-9b-chat-1m", 4, 1e8, 1048576), ("glm-4-9b", 2, 1e4, 8192),
])
def test_real_configs(folder: str, kv: int, base: float, context: int) -> None:
    config = json.loads((factory.REFERENCE.parent / folder / "config.json").read_text())
    spec = GLM4_9B.spec_from_config(config, "config.json")
    assert (spec.n_layer, spec.n_embd, spec.n_head, spec.n_head_kv, spec.head_dim) == (40, 4096, 32, kv, 128)
    assert (spec.n_ff, spec.vocab_size, spec.rope_dim) == (13696, 151552, 64)
    assert spec.rope_base == pytest.approx(base) and spec.context_length == context
    assert spec.qkv_bias and not spec.tied_embeddings


@pytest.mark.skipif(not factory.REFERENCE.is_dir(), reason="../shared/glm4-reference absent")
def test_real_index_plans_every_tensor() -> None:
    """The 9B shard index names exactly the tensors the plan expects (284 = 40 x 7 + 4)."""
    from glm4_local.convert.tensors import plan_tensors

    index = json.loads((factory.REFERENCE / "model.safetensors.index.json").read_text())
    spec = GLM4_9B.spec_from_config(json.loads((factory.REFERENCE / "config.json").read_text()), "config.json")
    names = set(index["weight_map"])
    assert len(names) == 284
    table_shapes = _fake_shapes(spec)
    assert set(table_shapes) == names - GLM4_9B.tensors.derived
    shapes = {n: table_shapes.get(n, (64,)) for n in names}
    plan = plan_tensors(GLM4_9B, spec, shapes, "index")
    assert len(plan) == 40 * 7 + 3
    assert [p.name for p in plan[:3]] == ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_qkv.weight"]
    assert dict((p.name, p.shape) for p in plan)["blk.0.attn_qkv.weight"] == (4608, 4096)


def _fake_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Shapes keyed by every source name, built from the table itself (unknown names get ignored)."""
    out: dict[str, tuple[int, ...]] = {}
    for target, bid in GLM4_9B.tensors.targets(spec):
        for part in target.parts[spec.layout]:
            out[part.pattern.format(bid=bid)] = part.shape(spec)
    return out


def test_chatglm3_config_is_refused_by_its_tokenizer(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(make_checkpoint(), tmp_path / "chatglm3"))
    (folder / "tokenizer.model").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match="sentencepiece"):
        convert(str(folder), OUT_TYPES["f16"], output=tmp_path / "x.gguf")

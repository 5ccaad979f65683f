"""Shared fixtures: tiny checkpoints and their GGUFs, built once per session; user folders isolated."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import children, factory, toolscripts
from helpers.serving import Server

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert


def pytest_configure() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def end_children() -> Iterator[None]:
    """Whatever happens in a test, no child it started (children.started) outlives it."""
    yield
    children.end_all()


needs_real_tokenizer = pytest.mark.skipif(
    not factory.REAL_TOKENIZER.is_file(),
    reason=f"GLM-4 reference files not found at {factory.REAL_TOKENIZER.parent} (../shared absent)",
)


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs in its own folder with its own Hugging Face cache: nothing touches $HOME."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GLM4_LOCAL_HOME", str(tmp_path / "glm4-local-home"))
    monkeypatch.delenv("GLM4_LOCAL_MODELS", raising=False)
    yield


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make_checkpoint(**Spec fields) -> folder; the same spec is built only once per session."""
    built: dict[factory.Spec, Path] = {}

    def make(**fields: object) -> Path:
        spec = factory.Spec(**fields)  # type: ignore[arg-type]
        if spec not in built:
            root = tmp_path_factory.mktemp("ckpt")
            built[spec] = factory.build_checkpoint(root / "glm-4-tiny", spec)
        return built[spec]

    return make


@pytest.fixture(scope="session")
def make_gguf(tmp_path_factory: pytest.TempPathFactory, make_checkpoint: Callable[..., Path]) -> Callable[..., Path]:
    """make_gguf(outtype, **Spec fields) -> GGUF path, converted once per session."""
    built: dict[tuple, Path] = {}

    def make(outtype: str = "f32", **fields: object) -> Path:
        key = (outtype, tuple(sorted(fields.items())))
        if key not in built:
            folder = make_checkpoint(**fields)
            out = tmp_path_factory.mktemp("gguf") / f"tiny-{outtype}.gguf"
            convert(str(folder), OUT_TYPES[outtype], output=out)
            built[key] = out
        return built[key]

    return make


REAL_SHAPE = factory.Shape(n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=128)


@pytest.fixture(scope="session")
def real_vocab_gguf(make_gguf: Callable[..., Path]) -> Path:
    if not factory.REAL_TOKENIZER.is_file():
        pytest.skip(f"GLM-4 reference files not found at {factory.REAL_TOKENIZER.parent}")
    return make_gguf("f16", real_tokenizer=True, shape=REAL_SHAPE)


SCRIPT_WORDS = ("lookup", "{}", "Sunny", " day")
SCRIPTS: dict[str, dict[str, object]] = {
    "answer": {"script": (("<|assistant|>", "\n"), ("\n", "Sunny"), ("Sunny", " day"), (" day", "<|user|>"))},
    "endoftext": {"script": (("<|assistant|>", "\n"), ("\n", "Sunny"), ("Sunny", "<|endoftext|>"))},
    "tool": {"script": (("<|assistant|>", "lookup"), ("lookup", "\n"), ("\n", "{}"), ("{}", "<|observation|>"),
                        ("Sunny", " day"), (" day", "<|user|>")), "after_observation": "Sunny"},
    "bad_json": {"script": (("<|assistant|>", "lookup"), ("lookup", "\n"), ("\n", "{"), ("{", "<|observation|>"))},
    # a long trained context so that a reply can run for seconds (Ctrl-C tests)
    "endless": {"script": (("<|assistant|>", "\n"), ("\n", " day"), (" day", " day")),
                "shape": factory.Shape(context=65536)},
    # endless too, without GLM-4's leading newline (what other GGUFs, or a prefilled reply, write)
    "unled": {"script": (("<|assistant|>", "Sunny"), ("Sunny", " day"), (" day", " day"))},
}


@pytest.fixture(scope="session")
def scripted_gguf(make_gguf: Callable[..., Path]) -> Callable[[str], Path]:
    """A tiny GGUF whose replies are fixed by SCRIPTS[name], whatever the sampling settings."""

    def make(name: str) -> Path:
        scenario = SCRIPTS[name]
        return make_gguf("f32", dtype="f32", extra_tokens=SCRIPT_WORDS, script=scenario["script"],
                         after_observation=scenario.get("after_observation"),
                         shape=scenario.get("shape", factory.Shape()))

    return make


@pytest.fixture(scope="session")
def tool_gguf(make_gguf: Callable[..., Path]) -> Callable[[str], Path]:
    """A tiny GGUF that calls a tool and then answers, or answers alone, as tests/helpers/toolscripts.py scripts."""

    def make(name: str) -> Path:
        return make_gguf("f32", dtype="f32", **toolscripts.gguf_fields(name))

    return make


@pytest.fixture(scope="module")
def random_server(make_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server on random tiny weights, 1,024 tokens of context, one per test module (a module may
    define its own, with other flags)."""
    server = Server(make_gguf("f32"), tmp_path_factory.mktemp("serve"), "--ctx", "1024")
    yield server
    server.stop()

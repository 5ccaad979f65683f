"""The package's layers: which folder may import which, no cycles, one door to llama.cpp, facts said once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder on disk -> its import name
FOLDERS = {
    "glm4_local/core": "glm4_local.core",
    "glm4_local/chat": "glm4_local.chat",
    "glm4_local/frontends": "glm4_local.frontends",
    "glm4_local/server": "glm4_local.server",
    "convert": "glm4_local.convert",
}
# what each folder may import, besides itself
ALLOWED = {
    "glm4_local.core": set(),
    "glm4_local.chat": {"glm4_local.core"},
    "glm4_local.convert": {"glm4_local.core"},
    "glm4_local.server": {"glm4_local.core", "glm4_local.chat"},
    "glm4_local.frontends": {"glm4_local.core", "glm4_local.chat", "glm4_local.convert", "glm4_local.server"},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import of {node.module}")
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def folder_of(module: str) -> str | None:
    return next((f for f in sorted(ALLOWED, key=len, reverse=True) if module == f or module.startswith(f + ".")),
                None)


def folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in FOLDERS.values()}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            for module in imported_modules(path):
                target = folder_of(module)
                if target and target != package:
                    graph[package].add(target)
    return graph


def test_folders_import_only_the_layers_below() -> None:
    for package, targets in folder_graph().items():
        assert targets <= ALLOWED[package], f"{package} imports {targets - ALLOWED[package]}"


def test_folder_import_graph_has_no_cycle() -> None:
    graph = folder_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "open":
            raise AssertionError(f"import cycle: {' -> '.join([*path, node])}")
        if state.get(node) == "done":
            return
        state[node] = "open"
        for target in graph[node]:
            visit(target, [*path, node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def package_sources() -> list[Path]:
    return [p for folder in (*FOLDERS, "glm4_local") for p in (ROOT / folder).glob("*.py")]


def test_only_the_door_talks_to_llama_cpp() -> None:
    """core/llama.py (loading, tokens, logits, quantizer), core/decoder.py (the batched decode loop) and
    core/sampling.py (sampler chains and grammars)."""
    users = {p.relative_to(ROOT).as_posix() for p in package_sources()
             if any(m == "llama_cpp" or m.startswith("llama_cpp.") for m in imported_modules(p))}
    assert users == {"glm4_local/core/llama.py", "glm4_local/core/decoder.py", "glm4_local/core/sampling.py"}


@pytest.mark.parametrize("fact", [
    r'"chatglm"', r"MODEL_ARCH\.CHATGLM", r'"<\|observation\|>"', r'"<\|endoftext\|>"', r'"q4_k_m"',
    r'"glm4"', r"131072",
])
def test_each_model_fact_is_written_once(fact: str) -> None:
    """An architecture name, a stop token, an output-type name: one definition, in its table."""
    places = [p.relative_to(ROOT).as_posix() for p in package_sources() if re.search(fact, p.read_text("utf-8"))]
    assert len(places) == 1, f"{fact} is written in {places}"


def test_the_installed_converter_is_inside_the_package() -> None:
    import glm4_local.convert

    assert Path(glm4_local.convert.__file__).parent == ROOT / "convert"

"""The package's layers: which folder may import which, no cycles between folders or files, one door
to llama.cpp, facts said once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"glm4_local.core", "glm4_local.core.families", "glm4_local.core.gguf", "glm4_local.core.llama"}
# folder on disk -> its import name
FOLDERS = {
    "glm4_local": "glm4_local",
    "glm4_local/core": "glm4_local.core",
    "glm4_local/core/families": "glm4_local.core.families",
    "glm4_local/core/gguf": "glm4_local.core.gguf",
    "glm4_local/core/llama": "glm4_local.core.llama",
    "convert": "glm4_local.convert",
    "glm4_local/chat": "glm4_local.chat",
    "glm4_local/tools": "glm4_local.tools",
    "glm4_local/documents": "glm4_local.documents",
    "glm4_local/gguf_tools": "glm4_local.gguf_tools",
    "glm4_local/store": "glm4_local.store",
    "glm4_local/server": "glm4_local.server",
    "glm4_local/frontends": "glm4_local.frontends",
}
# what each folder may import, besides itself: each layer only what lies below it
ALLOWED = {
    "glm4_local.core": set(),  # the small shared utilities: errors, atomic files, JSON files, paths, progress
    "glm4_local.core.families": {"glm4_local.core"},
    "glm4_local.core.gguf": {"glm4_local.core", "glm4_local.core.families"},
    "glm4_local.core.llama": {"glm4_local.core", "glm4_local.core.gguf"},
    "glm4_local.convert": CORE,
    "glm4_local.chat": CORE,
    "glm4_local.tools": CORE,
    "glm4_local.documents": CORE,  # readers of files into the conversation (long documents)
    "glm4_local.gguf_tools": CORE | {"glm4_local.convert", "glm4_local.chat"},
    "glm4_local.store": CORE | {"glm4_local.convert", "glm4_local.chat", "glm4_local.gguf_tools"},  # pull, list
    "glm4_local.server": CORE | {"glm4_local.chat", "glm4_local.tools", "glm4_local.documents"},
    "glm4_local.frontends": CORE | {"glm4_local.convert", "glm4_local.chat", "glm4_local.gguf_tools",
                                    "glm4_local.tools", "glm4_local.documents", "glm4_local.server",
                                    "glm4_local.store"},
}
ALLOWED["glm4_local"] = set(ALLOWED)  # cli.py, on top: every layer


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function (not for type checking alone)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import of {node.module}")
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_files() -> dict[str, Path]:
    """Import name -> file, for every module of the package."""
    files = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return files


def folder_of(module: str) -> str | None:
    return next((f for f in sorted(ALLOWED, key=len, reverse=True) if module == f or module.startswith(f + ".")),
                None)


def folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in FOLDERS.values()}
    for module, path in module_files().items():
        package = folder_of(module)
        assert package is not None
        for imported in imported_modules(path):
            target = folder_of(imported)
            if target and target != package:
                graph[package].add(target)
    return graph


def file_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a `from package import module` counts as the module)."""
    files = module_files()
    return {module: {m for m in imported_modules(path) if m in files and m != module and not
                     (files[m].name == "__init__.py" and f"{m}." in module)}
            for module, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        if state.get(node) == "open":
            return [*path[path.index(node):], node]
        if state.get(node) == "done":
            return None
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target, [*path, node]):
                return cycle
        state[node] = "done"
        return None

    return next((c for node in sorted(graph) if (c := visit(node, []))), None)


def test_every_package_folder_is_known() -> None:
    """A new sub-package must be placed in a layer here before it can be added."""
    on_disk = {p.parent.relative_to(ROOT).as_posix() for folder in ("glm4_local", "convert")
               for p in (ROOT / folder).rglob("__init__.py")}
    assert on_disk == set(FOLDERS)


def test_folders_import_only_the_layers_below() -> None:
    for package, targets in folder_graph().items():
        assert targets <= ALLOWED[package], f"{package} imports {targets - ALLOWED[package]}"


def test_folder_import_graph_has_no_cycle() -> None:
    assert find_cycle(folder_graph()) is None


def test_no_file_imports_itself_through_others() -> None:
    """No cycle between files either, not even through an import inside a function."""
    cycle = find_cycle(file_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def package_sources() -> list[Path]:
    return list(module_files().values())


def test_only_the_door_talks_to_llama_cpp() -> None:
    """core/llama/: door.py (loading, tokens, logits, quantizer), decoder.py (the batched decode loop),
    sampling.py (sampler chains and grammars) and activations.py (what the imatrix collects)."""
    users = {p.relative_to(ROOT).as_posix() for p in package_sources()
             if any(m == "llama_cpp" or m.startswith("llama_cpp.") for m in imported_modules(p))}
    assert users == {f"glm4_local/core/llama/{name}.py" for name in ("door", "decoder", "sampling", "activations")}


def page_sources() -> list[Path]:
    """The chat page's own files (not the libraries it carries in web/vendor)."""
    web = ROOT / "glm4_local" / "web"
    return [*web.glob("*.js"), *web.glob("*.html")]


@pytest.mark.parametrize("fact", [
    r'"chatglm"', r"MODEL_ARCH\.CHATGLM", r'"<\|observation\|>"', r'"<\|endoftext\|>"', r'"q4_k_m"',
    r'"glm4"', r"131072", r'"simple_browser"', r'"cogview"', r'Path\("models"\)',
    r"\[File Name\]", r"files uploaded", r"【\(",  # GLM-4's document form, its citations' pattern
])
def test_each_model_fact_is_written_once(fact: str) -> None:
    """An architecture name, a stop token, an output-type name, a tool type, a folder, a form the model reads
    or writes: one definition, in the package and in the page (which asks the server for the family's)."""
    places = [p.relative_to(ROOT).as_posix() for p in [*package_sources(), *page_sources()]
              if re.search(fact, p.read_text("utf-8"))]
    assert len(places) == 1, f"{fact} is written in {places}"


def test_the_installed_converter_is_inside_the_package() -> None:
    import glm4_local.convert

    assert Path(glm4_local.convert.__file__).parent == ROOT / "convert"

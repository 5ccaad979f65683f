"""The `--browser BACKEND` values: a table of backend kinds, each opened from what follows its colon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.options import BACKEND_HELP
from glm4_local.tools.search import SearchBackend
from glm4_local.tools.search_folder import FolderBackend
from glm4_local.tools.search_web import DdgBackend, SearxngBackend
from glm4_local.tools.search_zim import ZimBackend

# kind -> (needs a target after the colon, how to open it from (target, index folder))
BACKENDS: dict[str, tuple[bool, Callable[[str, Path], SearchBackend]]] = {
    "searxng": (True, lambda url, _: SearxngBackend(url)),
    "ddg": (False, lambda _, __: DdgBackend()),
    "duckduckgo": (False, lambda _, __: DdgBackend()),
    "zim": (True, lambda file, _: ZimBackend(Path(file).expanduser())),
    "folder": (True, lambda folder, index: FolderBackend(Path(folder).expanduser(), index)),
}


def open_backend(spec: str, index_dir: Path) -> SearchBackend:
    """The backend a `--browser` value names; `index_dir` keeps the folder backend's index."""
    kind, _, target = spec.partition(":")
    entry = BACKENDS.get(kind.lower())
    if entry is None or entry[0] != bool(target):
        raise Glm4LocalError(f"{spec!r}: not a search backend; give one of {BACKEND_HELP}")
    return entry[1](target, index_dir)

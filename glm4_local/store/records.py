"""What the store knows of each model: where it came from and what was fixed, in a small JSON file beside
it (`NAME.origin.json`), and the rows `list` shows for every model in the folders searched."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glm4_local.chat.models import model_dirs, models_in
from glm4_local.chat.session import save_json
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.filetext import FileTextError, read_regular
from glm4_local.core.paths import store_dir
from glm4_local.core.words import counted

ORIGIN_SUFFIX = ".origin.json"
MAX_RECORD_BYTES = 1 << 20
PARTIAL_DIR = ".partial"  # downloads not finished yet, kept for resuming (never listed as models)


@dataclass
class Origin:
    repo: str
    file: str | None  # None: converted from the repository's checkpoint
    commit: str
    sha256: str | None  # of the file as downloaded (the Hub's own checksum)
    repaired: list[str] = field(default_factory=list)  # what repair changed; empty: it was already right
    pulled: str = ""  # when, ISO 8601

    def describe(self) -> str:
        what = f"{self.repo}/{self.file}" if self.file else f"converted from {self.repo}"
        return f"{what} @ {self.commit[:10]}"


def origin_path(model: Path) -> Path:
    return model.with_name(model.stem + ORIGIN_SUFFIX)


def read_origin(model: Path) -> Origin | None:
    """The record beside `model`; None when there is none, or it is not one of ours (the model still
    works): only a regular file, read up to a bound, each field of its type."""
    try:
        data = json.loads(read_regular(origin_path(model), MAX_RECORD_BYTES, follow_links=False))
    except (OSError, ValueError, RecursionError, FileTextError):
        return None
    if not isinstance(data, dict):
        return None
    texts = [data.get(k) for k in ("repo", "commit", "pulled")]
    optional = [data.get(k) for k in ("file", "sha256")]
    repaired = data.get("repaired")
    if (not all(isinstance(v, str) for v in texts) or not all(v is None or isinstance(v, str) for v in optional)
            or not isinstance(repaired, list) or not all(isinstance(c, str) for c in repaired)):
        return None
    return Origin(texts[0], optional[0], texts[1], optional[1], repaired, texts[2])


def write_origin(model: Path, origin: Origin) -> None:
    save_json(origin_path(model), asdict(origin))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class ModelRow:
    """One line of `list`."""

    name: str
    path: Path
    size: int
    quantization: str
    context: int | None
    origin: str
    repaired: str  # "yes (N changes)", "no (already right)", "-" (not pulled)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"path": str(self.path)}


def _row(path: Path) -> ModelRow:
    from glm4_local.gguf_tools.summary import quick_facts

    quant, context = quick_facts(path)
    origin = read_origin(path) if path.parent == store_dir() else None
    if origin is None:
        where, fixed = ("local file" if path.parent != store_dir() else "unknown (no record)"), "-"
    else:
        where = origin.describe()
        fixed = f"yes ({counted(len(origin.repaired), 'change')})" if origin.repaired else "no (already right)"
    return ModelRow(path.stem, path, path.stat().st_size, quant, context, where, fixed)


def installed() -> list[ModelRow]:
    """Every model in the folders searched, the store's first, each folder's by name."""
    rows = []
    for folder in dict.fromkeys([store_dir(), *model_dirs()]):
        for path in models_in(folder):
            try:
                rows.append(_row(path))
            except (OSError, Glm4LocalError):
                continue
    return rows


def partial_downloads() -> list[tuple[Path, int]]:
    """Downloads that were interrupted: (part file, bytes so far)."""
    folder = store_dir() / PARTIAL_DIR
    parts = sorted(folder.glob("*.part")) if folder.is_dir() else []
    return [(p, p.stat().st_size) for p in parts if p.is_file()]


def remove_partial() -> list[tuple[Path, int, bool]]:
    """Remove the interrupted downloads: (part, bytes, removed); one a running pull holds is left."""
    import fcntl

    done = []
    for path, size in partial_downloads():
        try:
            with path.open("rb") as part:
                fcntl.flock(part.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
                path.unlink()
            done.append((path, size, True))
        except BlockingIOError:
            done.append((path, size, False))
        except FileNotFoundError:
            continue
    return done


def remove(name: str) -> tuple[Path, int]:
    """Remove the store's model `name` (file name or stem) and its record: (path, bytes freed). Models in
    other folders are the user's own files and are left alone."""
    from glm4_local.core.errors import StoreError

    matches = [p for p in models_in(store_dir()) if name in (p.name, p.stem)]
    if not matches:
        elsewhere = [p for folder in model_dirs() if folder != store_dir() for p in models_in(folder)
                     if name in (p.name, p.stem)]
        if elsewhere:
            raise StoreError(f"{elsewhere[0]} is not in the store ({store_dir()}); glm4-local removes only "
                             "models it pulled: delete that file yourself")
        raise StoreError(f"{name}: no such model in the store ({store_dir()}); `glm4-local list` shows them")
    path = matches[0]
    size = path.stat().st_size
    try:
        path.unlink()
        origin_path(path).unlink(missing_ok=True)
    except OSError as e:
        raise StoreError(f"{path}: cannot remove it ({e.strerror})") from e
    return path, size

"""Find a checkpoint: a local folder, or a Hub repo id already in the local Hugging Face cache.

Resolution never touches the network; `download_to_cache` is the one, explicit, exception.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from glm4_local.core.errors import SourceError, SourceNotCachedError

# What a conversion needs from a repo; never code (*.py) and never pickles.
DOWNLOAD_PATTERNS = ("*.safetensors", "*.json", "tokenizer.model", "chat_template.jinja")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_cache_dir() -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (Hugging Face's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def looks_like_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not source.startswith((".", "/", "~"))


def cached_snapshot(repo_id: str, cache: Path | None = None) -> Path | None:
    """The snapshot folder that refs/main points to (or the only/newest snapshot), if cached."""
    repo_dir = (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
        if (snapshots / revision).is_dir():
            return snapshots / revision
    candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def resolve_source(source: str, download: bool = False) -> Path:
    """The local folder holding the checkpoint `source` names; SourceError when there is none."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"{path}: not a folder (give the checkpoint folder, not a file)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise SourceError(f"{path}: folder is not readable")
        return path
    if not looks_like_repo_id(source):
        raise SourceError(f"{source}: no such folder")
    snapshot = cached_snapshot(source)
    if snapshot is not None:
        return snapshot
    if download:
        return download_to_cache(source)
    raise SourceNotCachedError(f"{source}: not a folder and not in the Hugging Face cache ({hub_cache_dir()})",
                               source)


def download_to_cache(repo_id: str) -> Path:
    """Fetch weights, configs and tokenizer (never code) into the Hugging Face cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise SourceError(
            f"{repo_id}: downloading needs huggingface_hub: pip install huggingface_hub"
        ) from e
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(DOWNLOAD_PATTERNS)))
    except Exception as e:  # the hub client raises many network/auth types; all mean the same here
        raise SourceError(f"{repo_id}: download failed ({type(e).__name__}: {e})") from e

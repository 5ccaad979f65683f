"""What a name given to `pull` means: a catalog tag, a Hub repository, or one file in one.

    (nothing)                         the default model at its default quantization
    glm-4-9b-chat[:q8_0]              a catalog tag
    owner/repo[:QUANT]                a repository: its GGUF of that quantization (Q4_K_M when not said),
                                      or, when it holds a checkpoint, a conversion to QUANT
    owner/repo/path/file.gguf         one file (also as a huggingface.co URL, with /blob/REV/ or /resolve/REV/)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from glm4_local.convert.source import looks_like_repo_id
from glm4_local.core.errors import StoreError
from glm4_local.store.catalog import CATALOG, DEFAULT_MODEL, catalog_model

_QUANT = re.compile(r"^[A-Za-z0-9_]+$")
_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")
FORMS = "a tag (" + ", ".join(f"{m.name}[:QUANT]" for m in CATALOG) + "), owner/repo[:QUANT] or owner/repo/FILE.gguf"


@dataclass(frozen=True)
class Wanted:
    """A pull request, resolved against the Hub later: one file, or a quantization to choose or make."""

    repo: str
    file: str | None = None  # an exact path in the repository
    quant: str | None = None  # the GGUF of this quantization (or a checkpoint converted to it)
    revision: str | None = None
    stored_name: str | None = None  # the catalog's name in the store; else the file's own name


def parse_name(name: str | None, revision: str | None = None) -> Wanted:
    """The Wanted for `name`; StoreError with the accepted forms when it is none of them."""
    text = (name or "").strip()
    if not text:
        quant = DEFAULT_MODEL.default_quant
        return Wanted(DEFAULT_MODEL.repo, DEFAULT_MODEL.file_for(quant), quant, revision,
                      DEFAULT_MODEL.stored_name(quant))
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    base, _, quant = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if quant and not _QUANT.match(quant):
        raise StoreError(f"{name}: {quant!r} is not a quantization name (e.g. Q4_K_M, q8_0)")
    parts = base.strip("/").split("/")
    if len(parts) == 1:
        return _catalog_wanted(name or "", parts[0], quant, revision)
    repo = "/".join(parts[:2])
    if not looks_like_repo_id(repo):
        raise StoreError(f"{name}: not a Hub repository name; give {FORMS}")
    rest = parts[2:]
    if len(rest) >= 2 and rest[0] in ("blob", "resolve"):
        revision, rest = revision or rest[1], rest[2:]
    if not rest:
        return Wanted(repo, None, quant.upper() or None, revision)
    path = "/".join(rest)
    if quant or not path.lower().endswith(".gguf") or ".." in rest:
        raise StoreError(f"{name}: a file in a repository is a .gguf path (owner/repo/FILE.gguf); give {FORMS}")
    return Wanted(repo, path, None, revision)


def _catalog_wanted(name: str, tag: str, quant: str, revision: str | None) -> Wanted:
    model = catalog_model(tag)
    if model is None:
        known = ", ".join(m.name for m in CATALOG)
        raise StoreError(f"{name}: not a model glm4-local knows ({known}); give {FORMS}")
    quant = quant.upper() or model.default_quant
    return Wanted(model.repo, model.file_for(quant), quant, revision, model.stored_name(quant))


def quant_matches(filename: str, quant: str) -> bool:
    """Whether a GGUF file's name says it is of quantization `quant` (Q4_K does not match Q4_K_M)."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".gguf")
    return re.search(rf"(?:^|[-._]){re.escape(quant)}(?:$|[-.])", stem, re.IGNORECASE) is not None

"""`pull`: a model from the Hub into the store, checked against the Hub's sha256 and repaired (tokenizer,
stop tokens, template) before it appears there; interrupted downloads resume.

Layout of the store: `NAME.gguf` and `NAME.origin.json` (where it came from, what was fixed);
`.partial/` holds what is being downloaded (`<sha256>.part`) and never shows as a model.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm4_local.convert.outtypes import DEFAULT_OUT_TYPE, out_type
from glm4_local.convert.pipeline import convert as convert_checkpoint
from glm4_local.convert.source import DOWNLOAD_PATTERNS, hub_cache_dir
from glm4_local.core.atomic import refuse_non_regular, remove_stale_temps
from glm4_local.core.errors import Glm4LocalError, Interrupted, StoreError
from glm4_local.core.paths import store_dir
from glm4_local.core.progress import Progress
from glm4_local.core.words import decimal_size
from glm4_local.gguf_tools.repair import RepairReport, repair_in_place
from glm4_local.gguf_tools.repair import repair as repair_gguf
from glm4_local.store.hub import DiskFull, Hub, HubFile, RepoListing, feed
from glm4_local.store.names import Wanted, parse_name, quant_matches
from glm4_local.store.records import PARTIAL_DIR, Origin, now, read_origin, write_origin

HEADER_ROOM = 64 * 2**20  # what a repaired header may add: GLM-4's every-split merges are a few MB
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
Notify = Callable[[str], None]


@dataclass(frozen=True)
class PullResult:
    path: Path
    origin: Origin
    fresh: bool  # False: the store already held this very file, and nothing was fetched
    checked: str = ""  # what the tokenizer check found (a pulled GGUF)


def pull(name: str | None, *, revision: str | None = None, outtype: str | None = None, force: bool = False,
         progress: Progress | None = None, notify: Notify = lambda message: None, hub: Hub | None = None
         ) -> PullResult:
    """Fetch what `name` means (see store.names) into the store; StoreError, in one line, for anything
    that stops it. Nothing half-written ever shows as a model; an interrupted download resumes."""
    wanted = parse_name(name, revision)
    hub = hub or Hub()
    listing = hub.listing(wanted.repo, wanted.revision)
    sink = progress or Progress()
    if wanted.file is None and not listing.ggufs() and listing.is_checkpoint():
        return _pull_checkpoint(hub, listing, wanted.quant or outtype, force, sink, notify)
    file = choose_file(wanted, listing)
    target = store_dir() / (wanted.stored_name or _safe_name(file.path))
    current = _current(target, listing.repo, file.path, force)
    if current is not None and current.sha256 == file.sha256 and not force:
        return PullResult(target, current, fresh=False)
    cached = _from_hf_cache(listing, file, sink, notify)
    source = cached or _download(hub, listing, file, sink, notify)
    changes, checked = _publish(source, cached is None, target, listing, file, sink, notify)
    origin = Origin(listing.repo, file.path, listing.commit, file.sha256, changes, now())
    write_origin(target, origin)
    return PullResult(target, origin, fresh=True, checked=checked)


def _download(hub: Hub, listing: RepoListing, file: HubFile, sink: Progress, notify: Notify) -> Path:
    """`file` in the store's partial folder, downloaded (or resumed) and checked against the Hub's sum."""
    part = store_dir() / PARTIAL_DIR / f"{file.checksum}.part"
    have = part.stat().st_size if part.is_file() else 0
    _check_space(file, file.size - have)
    for folder in (store_dir(), part.parent):  # what a killed pull left half-written (records, headers)
        remove_stale_temps(folder)
    resuming = f", resuming after the {decimal_size(have)} already here" if have else ""
    notify(f"fetching {listing.repo}/{file.path} ({decimal_size(file.size)}) at {listing.commit[:10]}{resuming}")
    try:
        written = hub.fetch(listing, file, part, sink, _digest(file))
    except DiskFull as e:
        part.unlink(missing_ok=True)
        raise StoreError(f"{e}; the partial download was removed: free some space and pull again") from None
    if written is None:
        written = _read_digest(part, file, sink)
    if written != file.checksum:
        part.unlink(missing_ok=True)
        raise StoreError(f"{file.path}: the download does not match the Hub's checksum ({written[:12]}… "
                         f"instead of {file.checksum[:12]}…); it was removed: pull again")
    return part


def _from_hf_cache(listing: RepoListing, file: HubFile, sink: Progress, notify: Notify) -> Path | None:
    """The file from the Hugging Face cache, when it is there at this commit and matches the Hub's sum
    (a damaged one is left alone, and downloaded instead)."""
    cached = Hub.cached(listing, file, hub_cache_dir())
    if cached is None:
        return None
    _check_space(file, 0, whole_copy=True)
    if _read_digest(cached, file, sink) != file.checksum:
        notify(f"{cached}: in the Hugging Face cache, but damaged; downloading it instead")
        return None
    notify(f"using {listing.repo}/{file.path} from the Hugging Face cache ({cached}); nothing is downloaded")
    return cached


def choose_file(wanted: Wanted, listing: RepoListing) -> HubFile:
    """The one GGUF `wanted` names in the repository, or a StoreError that lists what it has."""
    ggufs = [f for f in listing.ggufs() if not _SPLIT.search(f.path)]
    have = ", ".join(f.path for f in ggufs) or "none"
    if wanted.file is not None:
        found = listing.file(wanted.file)
        if found is None:
            raise StoreError(f"{listing.repo} has no file {wanted.file}; its GGUF files: {have}")
        if _SPLIT.search(found.path):
            raise StoreError(f"{found.path}: a split GGUF; glm4-local pulls single-file GGUFs (merge the parts "
                             "with llama-gguf-split --merge)")
        return found
    if not listing.ggufs():
        raise StoreError(f"{listing.repo} holds neither GGUF files nor a checkpoint (config.json and "
                         "*.safetensors)")
    quant = wanted.quant or DEFAULT_OUT_TYPE.label
    matches = [f for f in ggufs if quant_matches(f.path, quant)]
    if len(matches) == 1:
        return matches[0]
    if not matches and wanted.quant is None and len(ggufs) == 1:
        return ggufs[0]
    if matches:
        raise StoreError(f"{listing.repo} has several {quant} files ({', '.join(f.path for f in matches)}); "
                         "name one: owner/repo/FILE.gguf")
    raise StoreError(f"{listing.repo} has no {quant} GGUF; its GGUF files: {have}")


def _safe_name(path: str) -> str:
    name = _UNSAFE.sub("-", path.rsplit("/", 1)[-1]).lstrip(".-")
    return name if name.lower().endswith(".gguf") else f"{name}.gguf"


def _current(target: Path, repo: str, file: str | None, force: bool) -> Origin | None:
    """The record of what `target` holds now, when it came from the same place; StoreError when the name
    is taken by another model (unless `force`)."""
    if not os.path.lexists(target):
        return None
    refuse_non_regular(target)
    origin = read_origin(target)
    if origin is not None and origin.repo == repo and origin.file == file:
        return origin
    if not force:
        where = origin.describe() if origin else "with no record of where it came from"
        raise StoreError(f"{target.name} is already in the store ({where}); `glm4-local rm {target.stem}` "
                         "first, or pull with --force")
    return None


def _check_space(file: HubFile, to_download: int, whole_copy: bool = False) -> None:
    """Refuse before downloading what the disk cannot hold: the rest of the download and room for the
    repair (a repaired header, or with `whole_copy` a repaired copy of the whole file)."""
    room, then = (file.size, "the repaired copy") if whole_copy else (HEADER_ROOM, "the repair")
    need = to_download + room
    try:
        store_dir().mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(store_dir()).free
    except OSError as e:
        raise StoreError(f"{store_dir()}: cannot use the model store ({e.strerror})") from e
    if free < need:
        raise StoreError(f"pulling {file.path} needs {decimal_size(need)} free in {store_dir()} "
                         f"({decimal_size(to_download)} to download, {decimal_size(room)} for {then}); it has "
                         f"{decimal_size(free)}")


def _digest(file: HubFile) -> Any:
    """The Hub's checksum of `file`, to be fed its bytes: the LFS object's sha256, else git's blob id."""
    return hashlib.sha256() if file.sha256 else hashlib.sha1(f"blob {file.size}\0".encode())


def _read_digest(path: Path, file: HubFile, sink: Progress) -> str:
    """The Hub's checksum of the file at `path`, read whole."""
    digest = _digest(file)
    sink.start("Checking sha256" if file.sha256 else "Checking", file.size, 0)
    with path.open("rb") as stream:
        feed(digest, stream, None, sink)
    return digest.hexdigest()


def _publish(source: Path, owned: bool, target: Path, listing: RepoListing, file: HubFile, sink: Progress,
             notify: Notify) -> tuple[list[str], str]:
    """Repair (as `repair` does) and put the result in the store; what was changed, and what the tokenizer
    check found. `owned`: `source` is the store's own download, repaired in place and moved (removed on
    failure), not the Hugging Face cache's file (only read: the repair is a copy)."""
    staging = store_dir() / PARTIAL_DIR / f"{file.checksum}.repaired.gguf"
    staging.parent.mkdir(parents=True, exist_ok=True)

    def not_runnable(e: Glm4LocalError) -> StoreError:
        if owned:
            source.unlink(missing_ok=True)
        return StoreError(f"{listing.repo}/{file.path} is not a model glm4-local can run: "
                          f"{str(e).replace(str(source), 'the file')}")

    try:
        report = _in_place(source, sink) if owned else None
    except Glm4LocalError as e:
        raise not_runnable(e) from None
    if report is None:  # the cache's file, or a layout only a copy repairs
        _check_space(file, 0, whole_copy=True)  # the download is kept when there is no room for it
        try:
            report = repair_gguf(source, staging, force=True, progress=sink, notify=notify)
        except Glm4LocalError as e:
            raise not_runnable(e) from None
    try:
        if report.check is not None and not report.check.exact:
            raise StoreError(f"{listing.repo}/{file.path}: even repaired, it tokenizes differently from GLM-4's "
                             f"tokenizer ({report.check.summary()}); it was not added to the store")
        if not owned and report.output is None:  # already right, and not ours to move: linked, else copied
            _link_or_copy(source, staging)
        ready = staging if report.output not in (None, source) or not owned else source
        refuse_non_regular(target)
        os.replace(ready, target)
    except OSError as e:
        raise StoreError(f"{target}: cannot publish it ({e.strerror})") from e
    finally:
        staging.unlink(missing_ok=True)
        if owned:
            source.unlink(missing_ok=True)
    return report.changes, report.check.summary() if report.check is not None else ""


def _in_place(source: Path, sink: Progress) -> RepairReport | None:
    """repair_in_place; stopped part-way, the file is neither the download nor its repair: it goes."""
    try:
        return repair_in_place(source, sink)
    except KeyboardInterrupt as e:
        source.unlink(missing_ok=True)
        number = e.signal_number if isinstance(e, Interrupted) else signal.SIGINT
        raise Interrupted("interrupted while the download was being repaired in place: it was removed, and the "
                          "next pull fetches it again", number) from None


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(source.resolve(), dest)  # the cache's blob (its snapshot entry is a link) shares its blocks
    except OSError:
        shutil.copyfile(source, dest)


def _pull_checkpoint(hub: Hub, listing: RepoListing, quant: str | None, force: bool, sink: Progress,
                     notify: Notify) -> PullResult:
    """A repository of safetensors weights: downloaded into the Hugging Face cache and converted."""
    kind = out_type(quant or DEFAULT_OUT_TYPE.name)
    name = listing.repo.split("/")[-1]
    target = store_dir() / f"{name}-{kind.label}.gguf"
    current = _current(target, listing.repo, None, force)
    if current is not None and current.commit == listing.commit and not force:
        return PullResult(target, current, fresh=False)
    size = sum(f.size for f in listing.files if any(f.path.endswith(p.lstrip("*")) for p in DOWNLOAD_PATTERNS))
    notify(f"{listing.repo} is a checkpoint, not GGUF files: downloading its {decimal_size(size)} of weights into the "
           f"Hugging Face cache, then converting them to {kind.label}")
    folder = hub.snapshot(listing, DOWNLOAD_PATTERNS, hub_cache_dir())
    store_dir().mkdir(parents=True, exist_ok=True)
    convert_checkpoint(str(folder), kind, output=target, force=True, progress=sink, notify=notify, name=name)
    origin = Origin(listing.repo, None, listing.commit, None, [], now())
    write_origin(target, origin)
    return PullResult(target, origin, fresh=True)

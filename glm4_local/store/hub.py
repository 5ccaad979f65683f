"""The Hugging Face Hub, through its own client library: what a repository holds at a commit, one file
fetched so that an interruption resumes where it stopped, and every failure said in one line.

Only `pull` comes here; nothing else in glm4-local opens a connection to the Hub.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from glm4_local.core.errors import StoreError
from glm4_local.core.progress import Progress

HUB = "https://huggingface.co"
Digest = Any  # a hashlib object: update, copy, hexdigest
_FULL_DISK = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git object id, or a sha256


class DiskFull(StoreError):
    """The disk filled while a download was written."""


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str | None  # the LFS object's sha256; None for a small file kept in git (blob_id checks it)
    blob_id: str

    @property
    def checksum(self) -> str:
        """The Hub's own sum of its bytes (hex): the LFS sha256, else git's blob id; it names its part file."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class RepoListing:
    repo: str
    commit: str
    files: tuple[HubFile, ...]

    def ggufs(self) -> list[HubFile]:
        return [f for f in self.files if f.path.lower().endswith(".gguf")]

    def file(self, path: str) -> HubFile | None:
        return next((f for f in self.files if f.path == path), None)

    def is_checkpoint(self) -> bool:
        names = {f.path for f in self.files}
        return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def endpoint() -> str:
    """$HF_ENDPOINT (a mirror, or a test Hub), read when asked rather than when the library was imported."""
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _transport_kind(error: BaseException) -> str | None:
    """The HTTP library's failure, by its class names (the Hub client has changed HTTP libraries)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConnectError", "ConnectTimeout"}:
        return "connect"
    if "TimeoutException" in names:
        return "timeout"
    if names & {"TransportError", "NetworkError", "RemoteProtocolError"}:
        return "cut"
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


@contextmanager
def hub_errors(repo: str, where: str) -> Iterator[None]:
    """Every failure of a Hub call as one StoreError line naming `repo` and what to do."""
    from huggingface_hub import errors as hf

    try:
        yield
    except StoreError:
        raise
    except hf.GatedRepoError:
        raise StoreError(f"{repo}: a gated repository; accept its terms on its Hub page, then log in "
                         "(`hf auth login`, or HF_TOKEN)") from None
    except hf.RepositoryNotFoundError:
        raise StoreError(f"{repo}: no such model repository on {where} (or it is private: log in with "
                         "`hf auth login`, or set HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise StoreError(f"{repo}: no such revision on {where}") from None
    except (hf.EntryNotFoundError, getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)):
        raise StoreError(f"{repo}: the file is not on {where} (it may have been removed since it was "
                         "listed)") from None
    except hf.HFValidationError as e:
        raise StoreError(f"{repo}: not a repository name the Hub takes ({_first_line(e)})") from None
    except hf.OfflineModeIsEnabled:
        raise StoreError("offline mode is on (HF_HUB_OFFLINE); pulling needs the network: unset it") from None
    except hf.FileMetadataError as e:
        raise StoreError(f"{where} does not answer as the Hugging Face Hub does ({_first_line(e)}); "
                         "check HF_ENDPOINT") from None
    except hf.HfHubHTTPError as e:
        raise StoreError(f"{repo}: {where} answered HTTP {_http_status(e)}: {_first_line(e)}") from None
    except (ValueError, KeyError, TypeError) as e:  # JSON that is not the Hub's, or no JSON at all
        raise StoreError(f"{where} does not answer as the Hugging Face Hub does ({type(e).__name__}: "
                         f"{_first_line(e)}); check HF_ENDPOINT") from None
    except OSError as e:
        if e.errno in _FULL_DISK:
            raise DiskFull(f"the disk is full ({e.strerror})") from None
        raise StoreError(f"the download failed ({e.strerror or _first_line(e)}); pull again") from None
    except Exception as e:
        kind = _transport_kind(e)
        if kind == "connect":
            raise StoreError(f"cannot reach {where} ({_first_line(e)}); check the network (or HF_ENDPOINT)") from None
        if kind == "timeout":
            raise StoreError(f"{where} did not answer in time; try again later") from None
        if kind == "cut":
            raise StoreError(f"the connection to {where} was cut ({_first_line(e)}); pull again: it resumes where "
                             "it stopped") from None
        raise


class _Counted:
    """The part file as the Hub client writes it: every write also advances the progress bar and the
    checksum (so the file is not read again to check it)."""

    def __init__(self, file: BinaryIO, progress: Progress, digest: Digest) -> None:
        self._file, self._progress = file, progress
        self.digest: Digest | None = digest  # None once the client rewinds to anywhere but the start
        self._fresh = digest.copy()  # what it was before any byte

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        if self.digest is not None:
            self.digest.update(memoryview(data)[:written])
        self._progress.advance(written)
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """The client rewinds when a server ignores the Range asked for and sends the whole file."""
        self.digest = self._fresh.copy() if (offset, whence) == (0, os.SEEK_SET) else None
        return self._file.seek(offset, whence)

    def __getattr__(self, name: str) -> Any:  # tell, truncate
        return getattr(self._file, name)


@contextmanager
def _quiet_client() -> Iterator[None]:
    """The client's own progress bar, not drawn: ours is."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


class Hub:
    """One Hub (or mirror) and its token, as the client library finds them."""

    def __init__(self, url: str | None = None) -> None:
        if _offline():
            raise StoreError("offline mode is on (HF_HUB_OFFLINE); pulling needs the network: unset it")
        try:
            from huggingface_hub import HfApi
            from huggingface_hub.utils import logging as hf_logging
        except ImportError:
            raise StoreError("pulling needs huggingface_hub: pip install huggingface_hub") from None
        hf_logging.set_verbosity_error()  # its retry warnings would break our one-line messages
        self.url = url or endpoint()
        self.where = "the Hub" if self.url == HUB else self.url
        self._api = HfApi(endpoint=self.url)

    def listing(self, repo: str, revision: str | None = None) -> RepoListing:
        """The repository's files at `revision` (default: main), with sizes and checksums, and its commit."""
        from huggingface_hub import RepoFile

        with hub_errors(repo, self.where):
            commit = self._api.model_info(repo, revision=revision).sha
            if not isinstance(commit, str) or not _HEX.fullmatch(commit):
                raise StoreError(f"{repo}: {self.where} gave no commit for it")
            files = tuple(_checked(f, repo, self.where)
                          for f in self._api.list_repo_tree(repo, recursive=True, revision=commit)
                          if isinstance(f, RepoFile))
        return RepoListing(repo, commit, files)

    def fetch(self, listing: RepoListing, file: HubFile, part: Path, progress: Progress, digest: Digest) -> str | None:
        """Download `file` into `part`, continuing from what `part` already holds (a Range request); the
        hex `digest` of the whole part as written (None when it could not follow the writes). Only one
        process writes a part at a time."""
        from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
        from huggingface_hub.utils import build_hf_headers

        with hub_errors(listing.repo, self.where):
            url = hf_hub_url(listing.repo, file.path, revision=listing.commit, endpoint=self.url)
            location = get_hf_file_metadata(url, endpoint=self.url).location
            headers = build_hf_headers()
            if _origin(location) != _origin(url):
                headers.pop("authorization", None)  # a CDN's signed URL: the token stays with the Hub
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
            with os.fdopen(fd, "r+b") as stream:
                _lock(stream, file)
                have = stream.seek(0, os.SEEK_END)
                if have > file.size:  # not ours to trust: start again
                    stream.truncate(0)
                    have = 0
                progress.start(f"Downloading {file.path.rsplit('/', 1)[-1]}", file.size, 0)
                counted = _Counted(stream, progress, digest)
                stream.seek(0)  # what an earlier, interrupted pull wrote goes into the sum first
                feed(digest, stream, have, progress)
                stream.seek(have)
                with _quiet_client():
                    http_get(location, counted, resume_size=have, headers=headers, expected_size=file.size)
                return counted.digest.hexdigest() if counted.digest is not None else None

    @staticmethod
    def cached(listing: RepoListing, file: HubFile, cache: Path) -> Path | None:
        """The same file at the same commit, already in the Hugging Face cache (`hf download` put it there):
        nothing needs downloading. Only looked up, never written."""
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(listing.repo, file.path, cache_dir=cache, revision=listing.commit)
        except Exception:  # a cache it cannot read is a cache without the file
            return None
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None

    def snapshot(self, listing: RepoListing, patterns: tuple[str, ...], cache: Path) -> Path:
        """A checkpoint's files (never code) at the listed commit, in the Hugging Face cache."""
        from huggingface_hub import snapshot_download

        with hub_errors(listing.repo, self.where):
            return Path(snapshot_download(listing.repo, revision=listing.commit, allow_patterns=list(patterns),
                                          cache_dir=cache, endpoint=self.url))


def _lock(stream: BinaryIO, file: HubFile) -> None:
    """One writer per part file (released when it is closed); where there is no flock, no lock."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreError(f"{file.path}: another glm4-local pull is downloading it now") from None


def feed(digest: Digest, stream: BinaryIO, length: int | None, progress: Progress) -> None:
    """`length` bytes of `stream` from where it is (None: to its end) into `digest`, in pieces."""
    left = length
    while left != 0 and (chunk := stream.read(8 * 2**20 if left is None else min(left, 8 * 2**20))):
        digest.update(chunk)
        progress.advance(len(chunk))
        if left is not None:
            left -= len(chunk)


def _checked(entry: Any, repo: str, where: str) -> HubFile:
    """A listing's file as the Hub describes it; what names files here (its checksums) must be hex, and its
    size a size: a listing is data from the network, however it was reached."""
    sha256 = entry.lfs.sha256 if entry.lfs is not None else None
    size = entry.size
    if (not isinstance(entry.blob_id, str) or not _HEX.fullmatch(entry.blob_id)
            or (sha256 is not None and (not isinstance(sha256, str) or not _HEX.fullmatch(sha256)))
            or not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise StoreError(f"{repo}: {where} described {str(entry.path)[:200]!r} with a checksum or size that is "
                         "not one")
    return HubFile(str(entry.path), size, sha256, entry.blob_id)


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"

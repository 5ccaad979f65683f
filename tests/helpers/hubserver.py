"""A Hugging Face Hub on 127.0.0.1 for the `pull` tests: the routes the Hub's own client calls (model info,
the file tree with LFS checksums, resolve with HEAD and Range), the Hub's error codes, and the faults a
real download meets (a connection cut mid-file, bytes that do not match their checksum)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class HubRepo:
    files: dict[str, bytes]
    commit: str
    lfs: bool = True  # every file stored in LFS (as GGUFs and safetensors are)


@dataclass
class Faults:
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the first GET is cut
    served: dict[str, bytes] = field(default_factory=dict)  # path -> other bytes than its checksum says
    hold_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the first GET waits
    listed_sha256: dict[str, str] = field(default_factory=dict)  # path -> what the tree says its sha256 is
    not_a_hub: bool = False  # every API route answers 200 with a web page
    holding: threading.Event = field(default_factory=threading.Event)  # set while a GET waits
    release: threading.Event = field(default_factory=threading.Event)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalHub:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo: str, files: dict[str, bytes], lfs: bool = True) -> None:
        commit = hashlib.sha1(repo.encode() + b"".join(hashlib.sha1(d).digest() for d in files.values())).hexdigest()
        self.repos[repo] = HubRepo(dict(files), commit, lfs)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GETs of a file's bytes."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + path) and "/resolve/" in p]

    @contextmanager
    def running(self) -> Iterator[LocalHub]:
        hub = self

        class Handler(_Handler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()


class _Handler(BaseHTTPRequestHandler):
    owner: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._error(404, "EntryNotFound")

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.owner.requests.append((self.command, path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) in (4, 6):
            route, revision = (parts[4], parts[5]) if len(parts) == 6 else ("revision", "main")
            self._api(parts[2] + "/" + parts[3], route, revision, body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), body)
        else:
            self._error(404, "RepoNotFound")

    def _repo(self, name: str, revision: str) -> HubRepo | None:
        repo = self.owner.repos.get(name)
        if repo is None:
            self._error(404, "RepoNotFound")
        elif revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound")
            return None
        return repo

    def _api(self, name: str, route: str, revision: str, body: bool) -> None:
        if self.owner.faults.not_a_hub:
            self._send(200, b"<html><body>Welcome to nginx!</body></html>", {"Content-Type": "text/html"}, body)
            return
        repo = self._repo(name, revision)
        if repo is None:
            return
        if route == "revision":
            data: object = {"id": name, "modelId": name, "sha": repo.commit, "private": False,
                            "siblings": [{"rfilename": p} for p in repo.files]}
        elif route == "tree":
            data = [self._entry(p, d, repo.lfs) for p, d in repo.files.items()]
            for entry in data:
                if entry["path"] in self.owner.faults.listed_sha256:
                    entry["lfs"]["oid"] = self.owner.faults.listed_sha256[entry["path"]]
        else:
            self._error(404, "EntryNotFound")
            return
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)

    @staticmethod
    def _entry(path: str, data: bytes, lfs: bool) -> dict:
        entry: dict = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
        if lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _resolve(self, name: str, revision: str, path: str, body: bool) -> None:
        repo = self._repo(name, revision)
        if repo is None:
            return
        if path not in repo.files:
            self._error(404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
            return
        data = repo.files[path]
        etag = hashlib.sha256(data).hexdigest() if repo.lfs else git_blob_id(data)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if repo.lfs:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
        data = self.owner.faults.served.get(path, data)
        start = 0
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and body:
            start = int(wanted[6:].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        faults = self.owner.faults
        cut = faults.cut_after.pop(path, None) if body else None
        hold = faults.hold_after.pop(path, None) if body else None
        if hold is not None:
            self._send(206 if start else 200, data[start:], headers, body, hold, faults)
        else:
            self._send(206 if start else 200, data[start:], headers, body, cut)

    def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        message = json.dumps({"error": code}).encode()
        self._send(status, message, {"X-Error-Code": code, "Content-Type": "application/json", **(headers or {})},
                   True)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool, cut: int | None = None,
              hold: Faults | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not body:
            return
        if cut is not None:  # the connection drops part-way: the client has a Content-Length it never gets
            self.wfile.write(data[:cut])
            self.wfile.flush()
            if hold is not None:  # ... after waiting, as a stalled download does, until the test goes on
                hold.holding.set()
                hold.release.wait(120)
            self.close_connection = True
            return
        self.wfile.write(data)

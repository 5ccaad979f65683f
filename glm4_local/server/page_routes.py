"""The chat page (`/`, its files under `/page/`) and the routes only it needs: which tools the server
runs, a document's text and size in tokens, and the files a conversation's code wrote to /mnt/data."""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.filetext import FileTextError, open_regular
from glm4_local.documents.readers import read_document
from glm4_local.server.protocol import ApiError, bad_request
from glm4_local.server.tool_sessions import CONVERSATION_ID, ToolSessions, UnknownConversation

PAGE_DIR = Path(__file__).resolve().parent.parent / "web"
FILES_PATH = "/v1/glm4/files"
# the page runs only its own files: no inline script, nothing from another origin, never framed
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
               "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# a file the model's code wrote is never a page of this origin (it could script the API key away)
FILE_POLICY = "default-src 'none'; sandbox"
CHUNK = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n"
Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Handler, bool], Handler]


def file_url(conversation: str, name: str) -> str:
    return f"{FILES_PATH}/{conversation}/{quote(name, safe='')}"


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class PageFiles(StaticFiles):
    """The page's own files, with the page's policy on each."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_page_headers())
        return response


def _open_data_file(folder: Path, name: str) -> BinaryIO:
    """A regular file directly in the folder, opened without following a link the code may have left and
    without waiting on a FIFO it may have made (in a worker thread: never in the event loop)."""
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ApiError(404, f"no file {name!r}", "not_found_error")
    try:
        return open_regular(folder / name, follow_links=False)
    except FileTextError:
        raise ApiError(404, f"{name!r} is not a file", "not_found_error") from None
    except OSError:
        raise ApiError(404, f"no file {name!r} in this conversation's /mnt/data", "not_found_error") from None


async def _chunks(file: BinaryIO, first: bytes, size: int) -> AsyncIterator[bytes]:
    """The file's bytes, read in worker threads a chunk at a time (as far as its size was when opened)."""
    try:
        yield first
        left = size - len(first)
        while left > 0 and (chunk := await run_in_threadpool(file.read, min(CHUNK, left))):
            left -= len(chunk)
            yield chunk
    finally:
        file.close()


def _document(name: str, data: bytes, document_tokens: Callable[[dict[str, str]], int]) -> dict[str, Any]:
    suffix = Path(name).suffix[:16]
    with tempfile.TemporaryDirectory(prefix="glm4-local-document-") as folder:
        path = Path(folder) / f"document{suffix}"
        path.write_bytes(data)
        try:
            document = read_document(path)
        except Glm4LocalError as e:
            raise bad_request(str(e).replace(str(path), name).replace(path.name, name), "data") from None
    return {"name": name, "kind": document.kind, "pages": document.pages, "text": document.text,
            "characters": len(document.text), "tokens": document_tokens({"name": name, "text": document.text})}


def _formats(family: ModelFamily | None) -> dict[str, Any]:
    """What the page must know of the model's family to show its conversation: the names of its built-in
    tools and how its answers cite (None until a model is known)."""
    if family is None:
        return {"code": None, "browser": None, "citation": None}
    built_in = family.replies.built_in
    return {"code": built_in.code, "browser": built_in.browser, "citation": built_in.citation}


class PageState(Protocol):
    """What the page's routes read of the server's state."""

    tools: ToolSessions | None
    family: ModelFamily | None


def page_routes(guard: Guard, state: PageState, document_tokens: Callable[[dict[str, str]], int],
                read_json: Callable[[Request], Awaitable[Any]], context_tokens: Callable[[], int | None]
                ) -> list[BaseRoute]:
    tools = state.tools

    async def page(request: Request) -> Response:
        return FileResponse(PAGE_DIR / "index.html", headers=_page_headers())

    async def tool_list(request: Request) -> Response:
        offered = tools.offered() if tools else []
        idle = tools.idle_seconds if tools else None
        return JSONResponse({"tools": offered, "conversation_idle_seconds": idle, "context_tokens": context_tokens(),
                             "formats": _formats(state.family)})

    async def document(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(body.get("data"), str):
            raise bad_request("send {\"name\": FILE NAME, \"data\": BASE64 OF ITS BYTES}")
        try:
            data = base64.b64decode(body["data"], validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("data: not base64", "data") from None
        name = Path(body["name"]).name or "document"
        return JSONResponse(await run_in_threadpool(_document, name, data, document_tokens))

    async def data_file(request: Request) -> Response:
        conversation, name = request.path_params["conversation"], request.path_params["name"]
        if tools is None or not CONVERSATION_ID.fullmatch(conversation):
            raise ApiError(404, "no such conversation", "not_found_error")
        try:
            folder = tools.data_dir(conversation)
        except UnknownConversation as e:
            raise ApiError(404, str(e), "not_found_error", code="conversation_ended" if e.ended else None) from None
        file = await run_in_threadpool(_open_data_file, folder, name)
        try:
            size = os.fstat(file.fileno()).st_size
            first = await run_in_threadpool(file.read, min(CHUNK, size))
        except BaseException:
            file.close()
            raise
        png = name.endswith(".png") and first.startswith(PNG)
        headers = {"Content-Security-Policy": FILE_POLICY, "X-Content-Type-Options": "nosniff",
                   "Content-Length": str(size),
                   "Content-Disposition": "inline" if png else f"attachment; filename=\"{_ascii(name)}\"; "
                                                               f"filename*=UTF-8''{quote(name, safe='')}"}
        return StreamingResponse(_chunks(file, first, size), media_type="image/png" if png else
                                 "application/octet-stream", headers=headers)

    return [
        Route("/", guard(page, True), methods=["GET"]),
        Mount("/page", app=PageFiles(directory=PAGE_DIR), name="page"),
        Route("/v1/glm4/tools", guard(tool_list, False), methods=["GET"]),
        Route("/v1/glm4/documents", guard(document, False), methods=["POST"]),
        Route(FILES_PATH + "/{conversation}/{name}", guard(data_file, False), methods=["GET"]),
    ]


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)

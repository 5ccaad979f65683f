"""What the browser and the document readers read, when a page, a server or a file is hostile: linear
time at the size caps the code enforces, bounded by what a file expands to, one clear line or the demo's
failure text, never a traceback or a hang. Servers and files are the tests' own, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers.docfixtures import docx_with, write_pdf

from glm4_local.core.filetext import MAX_PDF_PAGES
from glm4_local.documents.readers import DocumentError, read_document
from glm4_local.tools.browser import OPEN_SECONDS, Browser
from glm4_local.tools.fetch import MAX_BYTES, FetchError, fetch, refused_address
from glm4_local.tools.search_folder import FolderBackend
from glm4_local.tools.search_web import SearxngBackend

pytest.importorskip("trafilatura", reason="the browser needs the [browser] extra")

# pages at the 5 MiB cap that cost the old regular expressions hours (each rescanned from every start)
ADVERSARIAL = {
    "unclosed-title": b"<html><head>" + b"<title>" * (MAX_BYTES // 7 - 4),
    "unclosed-script": b"<p>text</p>" + b"<script>" * (MAX_BYTES // 8 - 4),
    "bold-runs": b"<p>" + b"**a " * (MAX_BYTES // 4 - 4) + b"</p>",
    "bold-tags": b"<article><p>" + b"<b>a </b>**a " * (MAX_BYTES // 13 - 4) + b"</p></article>",
    "many-links": b"<article><p>" + b"".join(b'<a href="/p%d">link %d</a> ' % (i, i) for i in range(145_000)),
    "open-angles": b"<p>" + b"<a " * (MAX_BYTES // 3 - 4),
    "nested-refs": b"<title>&#" + b"9" * (MAX_BYTES - 40) + b";</title>",
}


class Hostile(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.strip("/")
        if name == "idna":
            body, kind = b"<html><head><title>Odd charset</title></head><body><p>Text that is long enough to be " \
                         b"the main text of this page for the extractor to keep.</p></body></html>", \
                "text/html; charset=idna"
        else:
            body, kind = ADVERSARIAL[name], "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile_site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.processes
@pytest.mark.parametrize("page", sorted(ADVERSARIAL))
def test_an_adversarial_page_at_the_size_cap_opens_within_the_deadline(hostile_site: str, page: str) -> None:
    browser = Browser(SearxngBackend(hostile_site), allow_private=True)
    started = time.monotonic()
    [observation] = browser.run("simple_browser", f'open_url("{hostile_site}/{page}")')
    took = time.monotonic() - started
    assert took < OPEN_SECONDS + 5, f"{page}: {took:.1f} s"
    assert observation.metadata in ("browser_result", "system_error")
    if observation.metadata == "system_error":  # the demo's failure words, which the model can recover from
        assert "while loading page w/ URL" in observation.content or "Failed to load page" in observation.content


@pytest.mark.processes
def test_every_step_after_the_extractor_is_linear_at_the_size_cap() -> None:
    """The old patterns, checked against ours on random small pages, then ours on 5 MiB hostile ones."""
    import random
    import re
    from html import unescape

    from glm4_local.tools.page_text import html_title, number_links, plain_text, without_bold

    bold = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
    tags = re.compile(r"<(script|style|title)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)
    rng = random.Random(7)
    pieces = ["*", "**", "a", " ", "\n", "<", ">", "<script>", "</SCRIPT>", "<title x>", "</title>", "<>", "&amp;",
              "<style", "</style>"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 24)))
        assert without_bold(text) == bold.sub(r"\1", text), repr(text)
        assert plain_text(text) == " ".join(unescape(tags.sub(" ", text)).split()), repr(text)
    hostile = [piece * (MAX_BYTES // len(piece)) for piece in
               ("<title>", "<title", "<script>", "**a ", "<a ", "[a](", "[a](x \"", "![", "[[x]", "&#1")]
    hostile.append("".join(f"[l{i}](http://e.com/{i}) " for i in range(200_000)))
    started = time.monotonic()
    for page in hostile:
        html_title(page)
        plain_text(page)
        without_bold(page)
        assert len(number_links(page, "http://e.com/")[1]) in (0, 200_000)
    assert time.monotonic() - started < 60  # the old patterns: hours for the first of these alone


@pytest.mark.processes
def test_turning_a_page_into_text_is_stopped_at_its_deadline() -> None:
    from glm4_local.tools.page_text import PageError, html_to_markdown

    slow = "<html><body><article><p>" + "".join(f'<a href="/p{i}">link {i}</a> ' for i in range(100_000))
    started = time.monotonic()
    with pytest.raises(PageError, match="took too long"):
        html_to_markdown(slow, "http://example.org/", timeout=0.5)
    assert time.monotonic() - started < 5
    assert "Sunny" in html_to_markdown("<html><body><p>Sunny day, a paragraph.</p></body></html>", "http://e.org/")


def test_a_page_in_a_charset_python_cannot_decode_is_read(hostile_site: str) -> None:
    browser = Browser(SearxngBackend(hostile_site), allow_private=True)
    [observation] = browser.run("simple_browser", f'open_url("{hostile_site}/idna")')
    assert observation.metadata == "browser_result" and "long enough" in observation.content


@contextlib.contextmanager
def trickling_server(headers_too: bool) -> Iterator[int]:
    """A server that sends its answer a byte every 0.25 s (headers too, or only the body)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n"
                if not headers_too:
                    connection.sendall(head)
                for byte in (head if headers_too else b"") + b"<p>" + b"x" * 1000:
                    if stop.wait(0.25):
                        break
                    try:
                        connection.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.processes
@pytest.mark.parametrize("headers_too", [True, False], ids=["headers", "body"])
def test_a_trickling_server_holds_a_fetch_no_longer_than_its_deadline(headers_too: bool) -> None:
    with trickling_server(headers_too) as port:
        started = time.monotonic()
        with pytest.raises(FetchError, match="timed out"):
            fetch(f"http://127.0.0.1:{port}/", allow_private=True, timeout=2.0)
        assert time.monotonic() - started < 3.5


@pytest.mark.parametrize("address", ["::127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
                                     "2002:7f00:1::1", "2002:c0a8:101::1", "::10.0.0.1"])
def test_ipv6_addresses_that_carry_a_private_ipv4_one_are_refused(address: str) -> None:
    assert refused_address(address)
    with pytest.raises(FetchError, match="local or private"):
        fetch(f"http://[{address}]:9/")


def test_public_addresses_in_the_same_forms_are_not() -> None:
    assert not any(refused_address(a) for a in ("64:ff9b::808:808", "2002:808:808::1", "2606:4700::1111"))


def test_model_chosen_arguments_are_observations_not_tracebacks(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\nsome words here\n")
    browser = Browser(FolderBackend(folder, tmp_path / "index"))
    for action in ('open_url("folder://docs/a.md%00.md")', 'open_url("http://[::1")', 'open_url("http://x:99999/")',
                   f'search("words", recency_days={"9" * 311})', 'search("words", recency_days=-5)',
                   'mclick(["x", 10**400])', "search(" + "a" * 50_000):
        observations = browser.run("simple_browser", action)
        assert observations and all(o.metadata in ("system_error", "browser_result") for o in observations), action
    [found] = browser.run("simple_browser", f'search("words", recency_days={"9" * 311})')
    assert "【0†A†】" in found.content or "a.md" in found.content or "# 【0†A" in found.content


def test_a_fifo_or_a_huge_file_in_the_folder_is_passed_over(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\nfindable words\n")
    os.mkfifo(folder / "trap.md")
    os.mkfifo(folder / "trap.pdf")
    (folder / "big.txt").write_bytes(b"words " * (MAX_BYTES // 6 + 10))
    backend = FolderBackend(folder, tmp_path / "index")  # indexing must not wait on the FIFOs
    assert backend.indexed == 2
    browser = Browser(backend)
    [opened] = browser.run("simple_browser", 'open_url("folder://docs/trap.md")')
    assert opened.metadata == "system_error"
    [big] = browser.run("simple_browser", 'open_url("folder://docs/big.txt")')
    assert big.metadata == "system_error" and "Failed to load page" in big.content


def test_a_damaged_folder_index_is_built_again(tmp_path: Path) -> None:
    folder, index = tmp_path / "docs", tmp_path / "index"
    folder.mkdir()
    (folder / "a.md").write_text("# A\nfindable words\n")
    FolderBackend(folder, index).db.close()
    [database] = index.glob("*.sqlite")
    database.write_bytes(b"not a database at all" * 100)
    backend = FolderBackend(folder, index)
    assert backend.indexed == 1 and backend.search("findable", None)
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone() == (1,)


@pytest.mark.processes
def test_a_docx_bomb_is_refused_by_what_it_expands_to(tmp_path: Path) -> None:
    bomb = docx_with(tmp_path / "bomb.docx", xml_bytes=300 * 2**20)
    assert bomb.stat().st_size < 4 * 2**20  # small on the wire
    started = time.monotonic()
    with pytest.raises(DocumentError, match="expands to"):
        read_document(bomb)
    assert time.monotonic() - started < 30


def test_a_docx_of_malformed_xml_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="not a readable DOCX"):
        read_document(docx_with(tmp_path / "broken.docx", b"<w:document><w:body><unclosed"))


@pytest.mark.processes
def test_a_pdf_listing_one_page_thousands_of_times_is_refused(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "one.pdf", ["the only page"])
    body = pdf.read_bytes()
    repeated = " ".join(["3 0 R"] * 10_000)
    body = body.replace(b"/Kids [3 0 R] /Count 1", f"/Kids [{repeated}] /Count 10000".encode())
    # the offsets after the page tree moved: pypdf finds the objects again by scanning (as for damaged files)
    pdf.write_bytes(body)
    started = time.monotonic()
    with pytest.raises(DocumentError, match=f"more than {MAX_PDF_PAGES:,} pages|not a readable PDF"):
        read_document(pdf)
    assert time.monotonic() - started < 30


def test_a_document_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "trap.docx"
    os.mkfifo(fifo)
    with pytest.raises(DocumentError, match="not a file"):
        read_document(fifo)

"""Long documents in the conversation: readers against files the tests make, GLM-4's document form,
and `chat --file` / `/file` counting them against the context."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import invoke, one_line_error
from helpers.docfixtures import write_pdf
from helpers.terminal import chat, saved

from glm4_local.chat.session import user_message
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.documents.form import Document, shown
from glm4_local.documents.readers import DocumentError, read_document

BOILERPLATE_HTML = """<html><head><title>Report</title><style>p {color: red}</style><script>var x = 1;</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>
<article><h1>Annual report</h1><p>Revenue grew by twelve percent this year, driven by the new river ferry line
and by more passengers on the mountain railway, which this paragraph describes in enough words.</p>
<p>Costs fell slightly because the old diesel engines were finally retired from service last spring.</p></article>
<footer>Copyright 2026 · Privacy · Terms</footer></body></html>"""


def test_the_document_form_is_the_demos() -> None:
    documents = [Document("a.txt", "alpha", "text"), Document("b.md", "beta", "text")]
    expected = ("[File Name]\na.txt\n[File Content]\nalpha\n\n[File Name]\nb.md\n[File Content]\nbeta"
                "\n\n\n2 files uploaded.\nCompare them.")
    replies = GLM4_9B.replies
    assert replies.with_documents([d.as_data() for d in documents], "  Compare them. ") == expected
    assert replies.with_documents([], "just a question") == "just a question"
    # documents travel as data on the user message; the family writes them into the prompt
    message = user_message("  Compare them. ", [d.as_data() for d in documents])
    assert replies.template_messages([message], None) == [{"role": "user", "content": expected}]
    assert shown(message) == "[a.txt, 5 characters] [b.md, 4 characters]   Compare them. "


@pytest.mark.parametrize(("data", "expected"), [
    ("北京是中国的首都。".encode("gb18030"), "北京是中国的首都。"),
    ("naïve café".encode("utf-16"), "naïve café"),
    ("\ufeffwith a BOM".encode(), "with a BOM"),
    ("Grüße aus Köln, schöne Straße".encode("latin-1"), "Grüße aus Köln, schöne Straße"),
    (b"def main():\n    return 42\n", "def main():\n    return 42\n"),
])
def test_text_in_any_encoding(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "file.py"
    path.write_bytes(data)
    assert read_document(path).text == expected


def test_html_keeps_the_main_text(tmp_path: Path) -> None:
    pytest.importorskip("trafilatura")
    path = tmp_path / "report.html"
    path.write_text(BOILERPLATE_HTML)
    text = read_document(path).text
    assert "Revenue grew by twelve percent" in text and "diesel engines" in text
    assert "Privacy" not in text and "Contact" not in text and "var x" not in text and "color" not in text


def test_pdf_keeps_page_markers(tmp_path: Path) -> None:
    pytest.importorskip("pypdf")
    document = read_document(write_pdf(tmp_path / "paper.pdf", ["First page text", "Second page text"]))
    assert document.text == "[Page 1]\nFirst page text\n\n[Page 2]\nSecond page text" and document.pages == 2


def test_docx_paragraphs_and_tables(tmp_path: Path) -> None:
    docx = pytest.importorskip("docx")
    made = docx.Document()
    made.add_heading("Minutes", level=1)
    made.add_paragraph("The committee met on Tuesday.")
    table = made.add_table(rows=2, cols=2)
    for (row, col), value in {(0, 0): "item", (0, 1): "cost", (1, 0): "ferry", (1, 1): "12"}.items():
        table.cell(row, col).text = value
    made.save(tmp_path / "minutes.docx")
    assert read_document(tmp_path / "minutes.docx").text == \
        "Minutes\n\nThe committee met on Tuesday.\n\nitem | cost\nferry | 12"


def test_unreadable_files_are_one_clear_error(tmp_path: Path) -> None:
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter(clone_from=str(write_pdf(tmp_path / "open.pdf", ["secret text"])))
    writer.encrypt("s3cret")
    with open(tmp_path / "locked.pdf", "wb") as out:
        writer.write(out)
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "fake.pdf").write_bytes(b"%PDF-1.4 then nothing")
    (tmp_path / "fake.docx").write_bytes(b"not a zip")
    for name, problem in (("locked.pdf", "encrypted"), ("image.bin", "binary"), ("empty.txt", "no text"),
                          ("fake.pdf", "not a readable PDF"), ("fake.docx", "not a readable DOCX"),
                          ("missing.txt", "no such file"), (".", "not a file")):
        with pytest.raises(DocumentError, match=problem):
            read_document(tmp_path / name)


def test_chat_file_puts_the_document_in_the_message(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# Notes\n\nThe ferry leaves at nine.\n")
    plain = json.loads(invoke(["chat", str(scripted_gguf("answer")), "-p", "When?", "--json"]).stdout)
    result = invoke(["chat", str(scripted_gguf("answer")), "-p", "When?", "--json", "--file", "notes.md"])
    assert result.exit_code == 0, result.stderr
    with_file = json.loads(result.stdout)
    assert with_file["content"] == "Sunny day"
    assert with_file["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 10


def test_a_document_that_does_not_fit_is_refused_with_what_it_needs(scripted_gguf: Callable[[str], Path],
                                                                    tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    one_line_error(invoke(["chat", str(scripted_gguf("answer")), "-p", "Summarise", "--ctx", "512",
                           "--file", "long.txt"]), "long.txt is", "tokens", "512-token context", "--ctx", "KV cache")
    one_line_error(invoke(["chat", str(scripted_gguf("answer")), "-p", "x", "--file", "missing.pdf"]),
                   "missing.pdf: no such file")


@pytest.mark.processes
def test_file_in_the_terminal_and_the_session_keeps_the_document(scripted_gguf: Callable[[str], Path],
                                                             tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("The ferry leaves at nine.")
    (tmp_path / "huge.txt").write_text("word " * 5000)
    term = chat(scripted_gguf("answer"), tmp_path, "--ctx", "1024", columns=120)
    term.send("/file huge.txt\r")
    term.wait_for("huge.txt is")
    term.send("/file notes.txt\r")
    term.wait_for("notes.txt: ")
    assert "fits" in term.text()
    term.send("When does it leave?\r")
    term.wait_for("Sunny day")
    term.pump(0.3)
    user = [m for m in saved(tmp_path) if m["role"] == "user"]
    # the session keeps the document as data beside the question; the family writes it into the prompt
    assert user == [{"role": "user", "content": "When does it leave?",
                     "documents": [{"name": "notes.txt", "text": "The ferry leaves at nine."}]}]


@pytest.mark.processes
def test_a_long_prompt_shows_its_progress_and_ctrl_c_stops_it_at_once(scripted_gguf: Callable[[str], Path],
                                                                       tmp_path: Path) -> None:
    import time

    (tmp_path / "book.txt").write_text("The quick brown fox jumps over the lazy dog. " * 2500)  # ~25K tokens
    term = chat(scripted_gguf("endless"), tmp_path, "--ctx", "max", "--max-tokens", "3", columns=120)
    term.send("/file book.txt\r")
    term.wait_for("book.txt: ")
    term.send("summarise\r")
    term.wait_for("reading the prompt", timeout=60)
    term.wait_for("tok/s")
    assert "/25,067 tokens" in term.text()
    term.send("\x03")
    asked = time.monotonic()
    term.wait_for("[interrupted before the reply began]", timeout=10)  # nothing partial to keep
    assert time.monotonic() - asked < 3  # inside the batch, not after the whole prompt
    assert term.child.isalive()
    term.send("/stats\r")
    term.wait_for("stop: interrupted")
    term.send("/undo\r")  # the message with the book goes (else the next turn reads it again)
    term.wait_for("removed the last exchange")
    term.send("hello\r")
    term.wait_for("day day")  # the chat goes on

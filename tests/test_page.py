"""The chat page in a real headless Chromium (Selenium) against a real `glm4-local serve` with scripted GGUFs:
what a user sees and clicks. Screenshots of the main states go to $GLM4_LOCAL_ARTIFACTS (or the test's
temporary folder) as page-*.png; the long reply's render timings to page-render.json beside them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.marks import needs_sandbox
from helpers.serving import Server
from helpers.webfixtures import serve_site

pytest.importorskip("selenium", reason="the page tests need Selenium (the [dev] extra)")
from helpers.pagedriver import CHROMEDRIVER, CHROMIUM, WAIT, Page, chromium
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHINESE = "你好，世界！ 北京是中国的首都。"
pytestmark = [pytest.mark.processes,  # a server and a browser
              pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="no Chromium and ChromeDriver here "
                                 "(Debian: apt install chromium chromium-driver; .ci/run installs them)")]


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    browser = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("GLM4_LOCAL_ARTIFACTS") or tmp_path_factory.mktemp("page-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(driver: Any, artefacts: Path, tmp_path: Path) -> Page:
    return Page(driver, artefacts, tmp_path / "downloads")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(model: Path, *args: str) -> Server:
        servers.append(Server(model, tmp_path, *args))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def requests_total(server: Server) -> float:
    return server.metrics()["glm4_local_requests_total"]


def test_a_chinese_reply_streams_is_counted_and_kept(page: Page, served: Callable[..., Server],
                                                     tool_gguf: Callable[[str], Path]) -> None:
    server = served(tool_gguf("chinese"))
    page.open(server)
    assert page.find("#model-name").text == tool_gguf("chinese").stem  # which model this page talks to
    page.type("第一行")
    page.find("#input").send_keys(Keys.SHIFT, Keys.ENTER)
    page.type("第二行")
    assert page.script("return document.getElementById('input').value") == "第一行\n第二行"
    assert page.all(".message") == []  # Shift-Enter is a new line, not a send
    assert page.find("#send").is_displayed() and not page.find("#stop").is_displayed()  # Stop only while replying
    page.find("#input").send_keys(Keys.ENTER)
    page.replied(1)
    assert page.texts(".message.user .bubble") == ["第一行\n第二行"]
    assert page.answers() == [CHINESE]
    [stats] = page.texts(".message.answer .stats:last-child")
    assert stats.startswith("6 tokens · ") and stats.endswith(" tokens/s")  # five words and <|user|>, as usage counts
    assert page.texts("#conversations li a") == ["第一行"]  # a conversation is named by its first line
    page.shot("chinese")
    page.driver.refresh()  # kept in the browser
    page.until("document.body.dataset.ready === 'true'")
    assert page.answers() == [CHINESE]
    _, output = server.stop()  # serve logged the request: who, route, status, tokens, time
    assert re.search(r"^127\.0\.0\.1 POST /v1/chat/completions 200 · \d+ \+ 6 tokens · [\d.]+ s$", output, re.M), output


def test_regenerate_and_edit_and_resend(page: Page, served: Callable[..., Server],
                                        tool_gguf: Callable[[str], Path]) -> None:
    server = served(tool_gguf("chinese"))
    page.open(server)
    page.send("first question")
    page.replied(1)
    page.button(".message.answer", "Regenerate").click()
    page.replied(1)
    assert requests_total(server) == 2 and page.answers() == [CHINESE]
    page.button(".message.user", "Edit").click()
    editor = page.find(".message.user textarea.edit")
    editor.clear()
    editor.send_keys("edited question")
    page.button(".message.user", "Send").click()
    page.replied(1)
    assert requests_total(server) == 3
    assert page.texts(".message.user .bubble") == ["edited question"]
    assert page.answers() == [CHINESE]


def test_stop_ends_the_reply_and_frees_the_slot(page: Page, served: Callable[..., Server],
                                                scripted_gguf: Callable[[str], Path]) -> None:
    server = served(scripted_gguf("endless"))
    page.open(server)
    for stop in ("escape", "button"):
        page.send(f"tell me ({stop})")
        page.until("(document.querySelector('.streaming') || {}).textContent?.includes('day day')")
        if stop == "escape":
            page.find("body").send_keys(Keys.ESCAPE)
        else:
            page.find("#stop").click()
        answers = 1 if stop == "escape" else 2
        page.replied(answers)
        assert page.texts(".message.answer .stats")[answers - 1] == "stopped"
        assert page.answers()[-1].strip().startswith("day day")
        WebDriverWait(page.driver, WAIT).until(lambda _: server.json("GET", "/health")[1]["slots_busy"] == 0)
    page.shot("stopped")
    assert server.metrics()["glm4_local_requests_cancelled_total"] == 2


@needs_sandbox
def test_a_python_step_with_its_output_plot_and_file(page: Page, served: Callable[..., Server],
                                                     tool_gguf: Callable[[str], Path]) -> None:
    page.open(served(tool_gguf("plot"), "--python"))
    assert page.texts("#tools-on") == ["tools: python"]
    title = page.driver.title
    page.send("plot it")
    page.replied(1)
    assert page.answers() == ["Here is the plot."]
    [summary] = page.texts(".message.step summary")
    assert summary == "python › from IPython.display import Image, display"
    page.find(".message.step summary").click()
    [output] = page.texts(".message.step pre.output")
    assert output == "<script>document.title=1</script><img src=x onerror=document.title=2>\n"
    page.until("(document.querySelector('.message.step img') || {}).naturalWidth === 16")
    assert page.script("return document.querySelector('.message.step img').src").startswith("blob:")
    assert len(page.all(".message.step img")) == 1 and page.all(".message script") == []
    assert page.driver.title == title
    page.shot("python-step")
    image, link = page.all(".message.step .files a")  # the plot is a file in /mnt/data too
    assert (image.text, link.text) == ("image-1.png (79 B)", "points.csv (8 B)")
    link.click()
    assert page.downloaded("points.csv").read_text() == "x,y\n1,2\n"


def test_citations_are_numbered_links_to_the_pages_opened(page: Page, served: Callable[..., Server],
                                                          tool_gguf: Callable[[str], Path]) -> None:
    pytest.importorskip("trafilatura", reason="the browser needs the [browser] extra")
    with serve_site() as site:
        page.open(served(tool_gguf("browser"), "--browser", f"searxng:{site.base}", "--browser-allow-private"))
        page.send("pasta?")
        page.replied(1)
    assert page.answers() == ["Sunny[1] day"]
    [cite] = page.all(".message.answer a.cite")
    assert cite.get_attribute("href") == f"{site.base}/alpha" and cite.get_attribute("rel") == "noopener noreferrer"
    assert page.texts(".message.answer ol.sources li") == [f"Alpha page — {site.base}/alpha"]
    page.find(".message.step summary").click()
    assert "Alpha is the first letter" in page.texts(".message.step pre.output")[-1]
    page.shot("citations")


def test_a_conversation_exported_and_imported_back(page: Page, served: Callable[..., Server],
                                                   tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    from glm4_local.chat.session import load_conversation

    page.open(served(tool_gguf("chinese")))
    page.send("北京？")
    page.replied(1)
    page.find("#export").click()
    exported = page.downloaded("glm4-*.json")
    saved = json.loads(exported.read_text(encoding="utf-8"))
    assert [(m["role"], m["content"]) for m in saved["messages"]] == [("user", "北京？"), ("assistant", CHINESE)]
    assert load_conversation(exported).messages == saved["messages"]  # what `glm4-local chat --resume` reads
    page.find("#new-chat").click()
    assert page.all(".message") == []
    page.upload("import", exported)
    page.until("document.querySelectorAll('#conversations li').length === 2")
    assert page.texts(".message.user .bubble") == ["北京？"] and page.answers() == [CHINESE]
    assert page.texts("#conversations li.current a") == ["北京？"]


def test_a_hostile_reply_is_shown_as_text(page: Page, served: Callable[..., Server],
                                          tool_gguf: Callable[[str], Path]) -> None:
    page.open(served(tool_gguf("hostile")))
    title = page.driver.title
    page.send("say something nasty")
    page.replied(1)
    [answer] = page.answers()
    assert answer.startswith("<script>document.title='pwned'</script> <img src=x onerror=")
    assert "[click me](javascript:document.title='pwned')" in answer or "click me" in answer
    assert page.all(".message.answer script, .message.answer img, a[href^='javascript']") == []
    assert page.all(".message.answer strong")[0].text == "bold" and page.all(".message.answer .katex")
    assert page.driver.title == title
    page.shot("hostile")


def test_the_api_key_is_asked_once_and_kept(page: Page, served: Callable[..., Server],
                                            tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    page.open(served(tool_gguf("chinese"), "--api-key", "s3cret"), ready=False)
    page.until("document.getElementById('key-dialog').open")
    page.shot("api-key")
    page.find("#key").send_keys("s3cret")
    page.find("#key-ok").click()
    page.until("document.body.dataset.ready === 'true'")
    note = tmp_path / "笔记.md"
    note.write_text("# 笔记\n北京是首都。\n", encoding="utf-8")
    page.upload("attach", note)  # the documents route asks for the key too
    page.until("document.querySelectorAll('#documents .chip').length === 1")
    [chip] = page.texts("#documents .chip")
    assert chip.startswith("笔记.md · ") and chip.endswith(" tokens✕")
    page.send("里面说什么？")
    page.replied(1)
    assert page.answers() == [CHINESE] and page.texts(".message.user .chip") == ["笔记.md"]
    page.driver.refresh()
    page.until("document.body.dataset.ready === 'true'")
    assert not page.script("return document.getElementById('key-dialog').open")


def test_a_phone_sized_window(page: Page, served: Callable[..., Server], tool_gguf: Callable[[str], Path]) -> None:
    page.driver.set_window_size(390, 800)
    page.open(served(tool_gguf("chinese")))
    assert page.script("return innerWidth") <= 400
    sidebar = "document.getElementById('sidebar').getBoundingClientRect()"
    assert page.script(f"return {sidebar}.right") <= 0  # off screen until asked for
    page.send("北京？")
    page.replied(1)
    assert page.script("return document.documentElement.scrollWidth <= innerWidth")  # no sideways scrolling
    page.shot("narrow")
    page.find("#open-side").click()
    page.until(f"{sidebar}.left === 0")
    assert page.texts("#conversations li a") == ["北京？"]
    page.shot("narrow-list")


def test_a_4000_token_reply_re_renders_only_its_last_block(page: Page, served: Callable[..., Server],
                                                           tool_gguf: Callable[[str], Path],
                                                           artefacts: Path) -> None:
    page.open(served(tool_gguf("long")))
    page.find("#open-settings").click()
    page.find("#max_tokens").send_keys("4000")
    page.find("#settings-ok").click()
    page.script("for (const key of Object.keys(glm4Perf)) glm4Perf[key] = 0")
    page.send("write a lot")
    page.until("document.querySelector('.streaming .answer .block')")
    streamed_blocks = page.script("return document.querySelectorAll('.streaming .answer .block').length")
    page.replied(1, timeout=600)
    perf = page.script("return {...glm4Perf}")
    blocks = len(page.all(".message.answer .block"))
    assert page.texts(".message.answer .stats")[-1].startswith("4000 tokens")
    assert blocks > 1000 and streamed_blocks >= 1
    # drawn while it streams (paced: tokens come faster than draws); each update renders the block being
    # written and those begun since the last, never a finished one; the finished reply is drawn once more
    streamed_updates = perf["updates"] - 1  # the last: the whole reply, every block
    assert perf["draws"] == streamed_updates >= 2
    assert perf["staleRenders"] == 0
    assert perf["blockRenders"] <= streamed_updates + 2 * blocks
    streamed_ms = perf["ms"] - perf["lastMs"]
    timings = {"tokens": 4000, "blocks": blocks, "updates_while_streaming": streamed_updates,
               "block_renders": perf["blockRenders"], "ms_per_update": streamed_ms / streamed_updates,
               "ms_per_token": streamed_ms / 4000, "ms_per_draw_with_layout": perf["drawMs"] / perf["draws"],
               "max_ms": perf["maxMs"], "whole_reply_ms": perf["lastMs"]}
    (artefacts / "page-render.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("render:", timings)
    page.shot("long")


def test_a_failed_request_shows_why_and_keeps_the_message(page: Page, served: Callable[..., Server],
                                                          tool_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    """A document too long for the context: the chip warns before sending; sent anyway, the server's 400
    shows where the reply would be (never a blank reply, never saved), and Retry sends it again."""
    server = served(tool_gguf("chinese"), "--ctx", "512")
    page.open(server)
    book = tmp_path / "book.txt"
    book.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    page.upload("attach", book)
    page.until("document.querySelectorAll('#documents .chip').length === 1")
    assert "too long for the context of 512" in page.texts("#documents .chip")[0]
    page.send("summarise")
    page.until("document.querySelector('.message.failed')")
    assert page.find("#stop").get_attribute("hidden") is not None
    [error] = page.texts(".message.failed .error")
    assert error.startswith("error: ") and "context" in error and "512" in error
    assert page.texts(".message.answer .answer") == []  # no blank reply
    saved = page.script("const id = JSON.parse(localStorage.getItem('glm4-local:conversations'))[0];"
                        "return JSON.parse(localStorage.getItem('glm4-local:conversation:' + id)).messages")
    assert [m["role"] for m in saved] == ["user"]  # the question stays, ready to be sent again
    page.shot("failed")
    before = requests_total(server)
    page.button(".message.failed", "Retry").click()
    page.until(f"document.querySelector('.message.failed') && {int(before)} < 1e9")
    page.until("document.getElementById('stop').hidden")
    assert page.texts(".message.failed .error") == [error]


def test_any_stored_reply_leaves_the_page_usable(page: Page, served: Callable[..., Server],
                                                 tool_gguf: Callable[[str], Path]) -> None:
    """Replies nested thousands deep (quotes, math) are drawn, and the page is ready after a reload."""
    page.open(served(tool_gguf("chinese")))
    hostile = ["> " * 2000 + "deep quote", "$" + "{" * 5000 + "x" + "}" * 5000 + "$ deep math",
               "- " * 3000 + "deep list"]
    conversation = {"id": "hostile1", "title": "hostile", "created": 1, "updated": 2, "tools": [],
                    "messages": [m for text in hostile for m in ({"role": "user", "content": "?"},
                                                                 {"role": "assistant", "content": text})]}
    page.script("localStorage.setItem('glm4-local:conversation:hostile1', arguments[0]);"
                "localStorage.setItem('glm4-local:conversations', JSON.stringify(['hostile1']))",
                json.dumps(conversation))
    page.driver.refresh()
    page.until("document.body.dataset.ready === 'true'")
    answers = page.answers()
    assert len(answers) == 3 and "deep quote" in answers[0] and "deep math" in answers[1]
    page.find("#new-chat").click()  # (that conversation is too long to go on in the tiny model's context)
    page.send("still works?")
    page.replied(1)
    assert page.answers() == [CHINESE]


def test_a_refused_key_and_a_file_that_is_no_conversation_are_said(page: Page, served: Callable[..., Server],
                                                                    tool_gguf: Callable[[str], Path],
                                                                    tmp_path: Path) -> None:
    server = served(tool_gguf("chinese"), "--api-key", "s3cret")
    page.open(server, ready=False)
    page.until("document.getElementById('key-dialog').open")
    page.find("#key").send_keys("wrong")
    page.find("#key-ok").click()
    page.until("document.getElementById('key-dialog').open && "
               "document.getElementById('key-note').textContent.includes('refused')")
    page.find("#key").send_keys("s3cret")
    page.find("#key-ok").click()
    page.until("document.body.dataset.ready === 'true'")
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes, not a conversation")
    page.upload("import", notes)
    page.until("document.getElementById('status').textContent.includes('notes.txt')")
    assert page.texts("#status") == ["notes.txt is not a conversation glm4-local saved (not JSON)"]


def test_glm_z1s_thoughts_are_folded_above_its_answer(page: Page, served: Callable[..., Server],
                                                     make_gguf: Callable[..., Path]) -> None:
    from helpers.glm4_0414 import Z1

    server = served(make_gguf("f32", dtype="f32", **Z1))
    page.open(server)
    page.send("hi")
    page.replied(1)
    assert page.answers() == ["Sunny day"]
    assert page.texts(".message.answer details.thoughts pre") == ["Hmm"]
    assert page.script("return document.querySelector('.message.answer details.thoughts').open") is False
    saved = page.script("return JSON.parse(localStorage.getItem('glm4-local:conversation:' + "
                        "JSON.parse(localStorage.getItem('glm4-local:conversations'))[0]))")
    assert {k: v for k, v in saved["messages"][-1].items() if not k.startswith("glm4_")} == {
        "role": "assistant", "content": "Sunny day", "reasoning_content": "Hmm"}

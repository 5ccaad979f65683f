"""A page as the model reads it: Markdown of its main text (trafilatura drops navigation and link-dense
boilerplate), links written `【{id}†{text}†{hostname}】` and images `[Image N]` as THUDM's demo
writes them. Link ids count from 0 on each page (a link repeated keeps its id); the hostname is left
out for links within the page's own site.

A page is whatever a web server chose to send: every step here is linear in its size (no pattern that
rescans from each start, no search of a list per link), and trafilatura runs in a bounded worker
(core/parse_worker.py) with the time the page's open has left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import urljoin, urlsplit

from glm4_local.core.filetext import FileTextError
from glm4_local.core.parse_worker import parse
from glm4_local.tools.extras import install_line

MARKDOWN_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s>]*(?:\([^()\s]*\)[^()\s>]*)*)>?"
                           r"(?:\s+\"[^\"]*\")?\s*\)")
TITLE_OPEN = re.compile(r"<title\b", re.IGNORECASE)
TITLE_CLOSE = re.compile(r"</title>", re.IGNORECASE)
SKIPPED_OPEN = re.compile(r"<(script|style|title)\b", re.IGNORECASE)  # elements whose text is not the page's
SKIPPED_CLOSE = {tag: re.compile(f"</{tag}>", re.IGNORECASE) for tag in ("script", "style", "title")}
PAGE_SECONDS = 15.0  # the most turning one page into text may take
LONG_NUMERIC_REFERENCE = re.compile(r"&#[xX]?[0-9a-fA-F]{16,};?")  # html.unescape fails on 4,300 digits


class PageError(Exception):
    """Why a page's text could not be had (one line, for the model's error observation)."""


@dataclass
class Page:
    url: str
    title: str
    markdown: str
    links: list[str] = field(default_factory=list)  # absolute addresses, by link id


def hostname(url: str) -> str:
    return urlsplit(url).hostname or ""


def join_url(base: str, href: str) -> str:
    """`href` resolved against `base`, for the offline backends' own schemes (zim://, folder://) too,
    which urljoin leaves unresolved."""
    scheme = urlsplit(base).scheme
    if scheme in ("http", "https", "") or urlsplit(href).scheme:
        return urljoin(base, href)
    joined = urljoin("http" + base[len(scheme):], href)
    return scheme + joined[len("http"):]


def number_links(markdown: str, page_url: str) -> tuple[str, list[str]]:
    """Markdown links and images in the demo's form; the links' absolute addresses by id."""
    ids: dict[str, int] = {}
    images = 0
    site = hostname(page_url)

    def replace(match: re.Match[str]) -> str:
        nonlocal images
        bang, text, href = match.groups()
        if bang:
            images += 1
            return f"[Image {images - 1}]"
        text = text.strip()
        if not text or not href:
            return text
        try:
            target = join_url(page_url, href)
            link_host = urlsplit(href).hostname
        except ValueError:  # an address urllib cannot read (a bad port, a broken IPv6 literal): text only
            return text
        number = ids.setdefault(target, len(ids))
        suffix = f"†{link_host}" if link_host and link_host != site else ""
        return f"【{number}†{text}{suffix}】"

    return MARKDOWN_LINK.sub(replace, markdown), list(ids)


def safe_unescape(text: str) -> str:
    """HTML character references decoded; one of thousands of digits (which html.unescape cannot
    convert) becomes U+FFFD."""
    return unescape(LONG_NUMERIC_REFERENCE.sub("\ufffd", text))


def html_title(html: str) -> str:
    opened = TITLE_OPEN.search(html)
    start = html.find(">", opened.end()) if opened else -1
    closed = TITLE_CLOSE.search(html, start) if start >= 0 else None
    return " ".join(safe_unescape(html[start + 1:closed.start()]).split()) if closed else ""


def plain_text(html: str) -> str:
    """All of a page's text, markup dropped, whitespace collapsed: cheap, for indexes and snippets. One
    pass: each search for an element's end starts where the last one ended."""
    parts: list[str] = []
    closes: dict[str, int] = {}  # element -> where its next end tag starts (-1: none after here)
    pos = 0
    while (lt := html.find("<", pos)) >= 0:
        parts.append(html[pos:lt])
        if (skipped := SKIPPED_OPEN.match(html, lt)) is not None:
            tag = skipped.group(1).lower()
            if closes.get(tag, 0) != -1 and closes.get(tag, -2) < lt:
                found = SKIPPED_CLOSE[tag].search(html, lt)
                closes[tag] = found.start() if found else -1
            if closes[tag] >= 0:
                parts.append(" ")
                pos = closes[tag] + len(tag) + 3
                continue
        gt = html.find(">", lt + 1)
        if gt < 0:  # no tag closes after here: the rest is text
            pos = lt
            break
        if gt == lt + 1:  # "<>" is text
            parts.append("<")
            pos = lt + 1
            continue
        parts.append(" ")
        pos = gt + 1
    parts.append(html[pos:])
    return " ".join(safe_unescape("".join(parts)).split())


def without_bold(text: str) -> str:
    """`**bold**` markers dropped (the demo's pages carry none), as `\\*\\*(?=\\S)(.+?)(?<=\\S)\\*\\*` would
    drop them, in one pass: a pair never spans a line, and a closing `**` follows a non-space."""
    starts = [m.start() for m in re.finditer(r"(?=\*\*)", text)]
    closers = [p for p in starts if p > 0 and not text[p - 1].isspace()]
    newlines = [m.start() for m in re.finditer("\n", text)]
    out: list[str] = []
    pos = closer = newline = 0  # copied up to pos; the first closer and newline not yet passed
    for start in starts:
        if start < pos or start + 2 >= len(text) or text[start + 2].isspace():
            continue
        while closer < len(closers) and closers[closer] < start + 3:
            closer += 1
        if closer == len(closers):
            break
        while newline < len(newlines) and newlines[newline] < start + 2:
            newline += 1
        end = closers[closer]
        if newline < len(newlines) and newlines[newline] < end:
            continue
        out += [text[pos:start], text[start + 2:end]]
        pos = end + 2
    out.append(text[pos:])
    return "".join(out)


def html_to_markdown(html: str, url: str, timeout: float = PAGE_SECONDS) -> str:
    """The page's main text as Markdown with links and images kept (for numbering)."""
    try:
        return str(parse("html_markdown", url, timeout, html=html, url=url, reading="page",
                         install_hint=install_line("browser")))
    except FileTextError as e:
        raise PageError(str(e)) from None


def page_from_html(html: str, url: str, timeout: float = PAGE_SECONDS) -> Page:
    markdown, links = number_links(without_bold(html_to_markdown(html, url, timeout)), url)
    return Page(url, html_title(html), markdown, links)


def page_from_markdown(text: str, url: str, title: str) -> Page:
    markdown, links = number_links(text, url)
    return Page(url, title, markdown, links)

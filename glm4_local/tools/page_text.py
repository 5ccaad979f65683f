"""A page as the model reads it: Markdown of its main text (trafilatura drops navigation and link-dense
boilerplate), links written `【{id}†{text}†{hostname}】` and images `[Image N]` as THUDM's demo
writes them. Link ids count from 0 on each page (a link repeated keeps its id); the hostname is left
out for links within the page's own site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import urljoin, urlsplit

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.extras import needs

MARKDOWN_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s>]*(?:\([^()\s]*\)[^()\s>]*)*)>?"
                           r"(?:\s+\"[^\"]*\")?\s*\)")
TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")  # the demo's pages carry no bold
TAGS = re.compile(r"<(script|style|title)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)


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
    links: list[str] = []
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
        target = join_url(page_url, href)
        if target not in links:
            links.append(target)
        link_host = urlsplit(href).hostname
        suffix = f"†{link_host}" if link_host and link_host != site else ""
        return f"【{links.index(target)}†{text}{suffix}】"

    return MARKDOWN_LINK.sub(replace, markdown), links


def html_title(html: str) -> str:
    match = TITLE.search(html)
    return " ".join(unescape(match.group(1)).split()) if match else ""


def plain_text(html: str) -> str:
    """All of a page's text, markup dropped, whitespace collapsed: cheap, for indexes and snippets."""
    return " ".join(unescape(TAGS.sub(" ", html)).split())


def html_to_markdown(html: str, url: str) -> str:
    """The page's main text as Markdown with links and images kept (for numbering)."""
    try:
        import trafilatura
    except ImportError:
        raise Glm4LocalError(needs("reading web pages", "browser", "trafilatura")) from None
    text = trafilatura.extract(html, url=url, output_format="markdown", include_links=True, include_images=True,
                               include_tables=True, include_comments=False, favor_recall=True, deduplicate=False)
    if not text:  # a page too small or too odd for the extractor: all its text, without markup
        text = trafilatura.html2txt(html) or ""
    return text


def page_from_html(html: str, url: str) -> Page:
    markdown, links = number_links(BOLD.sub(r"\1", html_to_markdown(html, url)), url)
    return Page(url, html_title(html), markdown, links)


def page_from_markdown(text: str, url: str, title: str) -> Page:
    markdown, links = number_links(text, url)
    return Page(url, title, markdown, links)

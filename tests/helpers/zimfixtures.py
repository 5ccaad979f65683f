"""ZIM archives made by the tests with libzim's own writer (offline Wikipedia in miniature)."""

from __future__ import annotations

from pathlib import Path

ARTICLES = {
    "A/Alpha": ("Alpha", "<html><head><title>Alpha</title></head><body><p>Alpha is the first letter of the Greek "
                "alphabet. It is followed by <a href=\"Beta\">Beta</a>. This text is long enough to be kept.</p>"
                "</body></html>"),
    "A/Beta": ("Beta", "<html><head><title>Beta</title></head><body><p>Beta is the second letter of the Greek "
               "alphabet and comes after alpha. This text is long enough to be kept as well.</p></body></html>"),
    "A/Rust": ("Rust (programming language)", "<html><head><title>Rust</title></head><body><p>Rust is a systems "
               "programming language with a borrow checker that keeps memory safe.</p></body></html>"),
}


def write_zim(path: Path, articles: dict[str, tuple[str, str]] = ARTICLES) -> Path:
    from libzim.writer import Creator, Hint, Item, StringProvider

    class Article(Item):
        def __init__(self, entry_path: str, title: str, html: str) -> None:
            super().__init__()
            self.entry_path, self.title, self.html = entry_path, title, html

        def get_path(self) -> str:
            return self.entry_path

        def get_title(self) -> str:
            return self.title

        def get_mimetype(self) -> str:
            return "text/html"

        def get_contentprovider(self) -> StringProvider:
            return StringProvider(self.html)

        def get_hints(self) -> dict:
            return {Hint.FRONT_ARTICLE: True}

    with Creator(str(path)).config_indexing(True, "eng") as creator:
        creator.set_mainpath(next(iter(articles)))
        for entry_path, (title, html) in articles.items():
            creator.add_item(Article(entry_path, title, html))
    return path

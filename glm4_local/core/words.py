"""Counts and sizes as people write them: "1 result", "2 results", "6.25 GB"."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def decimal_size(n: int) -> str:
    """A file's size as the Hub and disk makers give it (powers of ten): 6.25 GB, 1.6 MB, 1.0 kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"

"""Text the chat did not write (the model's reply, code, tool output, pages, MCP servers' words) shown on
a terminal as text: a control character a terminal would act on is shown as a visible escape instead.
Escape sequences can write the user's clipboard (OSC 52), set the window title, clear or redraw the
screen and hide text; a carriage return or backspace overwrites what is shown; bidirectional overrides
reorder it. Newlines and tabs stay; a Windows line end is a newline."""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional marks, embeddings and isolates
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    return CONTROLS.sub(_escape, text.replace("\r\n", "\n"))

"""How a reply's text reaches the client: stop strings cut across tokens, GLM-4's metadata line, calls held back."""

from __future__ import annotations

from glm4_local.core.families.glm4_replies import ReplyText
from glm4_local.server.replies import StopScanner

TOOLS = [{"type": "function", "function": {"name": "lookup"}}]


def scan(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    shown = "".join(scanner.feed(p) for p in pieces)
    return shown + scanner.flush(), scanner.hit


def test_stop_strings_are_found_across_pieces_and_never_sent() -> None:
    assert scan(["END"], ["abc E", "N", "D more"]) == ("abc ", True)
    assert scan(["END", "c E"], ["ab", "c E"]) == ("ab", True)
    assert scan(["END"], ["abc E", "N"]) == ("abc EN", False)  # a prefix left at the end is text after all
    assert scan([], ["a", "b"]) == ("ab", False)


def test_a_held_back_tail_is_released_once_it_cannot_start_a_stop() -> None:
    scanner = StopScanner(["<end>"])
    assert scanner.feed("x <e") == "x "
    assert scanner.feed("x") == "<ex"


def test_reply_text_hides_metadata_and_holds_calls() -> None:
    answer = ReplyText(TOOLS)
    assert [answer.feed(p) for p in ("", "\nHel", "lo")] == ["", "Hel", "lo"] and not answer.held
    call = ReplyText(TOOLS)
    assert [call.feed(p) for p in ("look", "up\n{", "}")] == ["", "", ""] and call.held
    plain = ReplyText(TOOLS)
    assert plain.feed("Hi there, friend\nbye") == "Hi there, friend\nbye"
    assert ReplyText(TOOLS).end() == "" and _ended(ReplyText(None), "no newline at all") == "no newline at all"
    prefilled = ReplyText(TOOLS, prefix="lookup\n")
    assert prefilled.feed("{}") == "" and prefilled.held


def test_a_first_line_streams_once_it_cannot_name_a_tool() -> None:
    untooled = ReplyText(None)
    assert [untooled.feed(p) for p in ("  ", "lookup", " more", "\nnext")] == ["", "  lookup", " more", "\nnext"]
    tooled = ReplyText(TOOLS)
    assert [tooled.feed(p) for p in ("look", "up", " is", " it")] == ["", "", "lookup is", " it"]
    assert not tooled.held and tooled.end() == ""


def _ended(reply: ReplyText, text: str) -> str:
    return reply.feed(text) + reply.end()

"""Open WebUI's first message at `serve`'s defaults (no --ctx, no --parallel, no --default-max-tokens): the chat
request it sends for "Hello" with its built-in tools attached, and the title request it sends in the same
moment, as tests/data/open-webui-first-message.json holds them. The chat is answered, streamed, while the
title is still being written (it does not wait behind it), and neither runs past the default reply cap."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.serving import Server

from glm4_local.server.options import DEFAULT_MAX_TOKENS

pytestmark = [pytest.mark.processes, pytest.mark.heavy]  # a real server, two replies of 4,096 tokens
RECORDED = json.loads((Path(__file__).parent / "data" / "open-webui-first-message.json").read_text("utf-8"))
OLD_DEFAULT_CONTEXT = 8192  # what refused this request before


def test_open_webuis_first_message_is_answered_beside_its_title_request(scripted_gguf: Callable[[str], Path],
                                                                        tmp_path: Path) -> None:
    server = Server(scripted_gguf("endless"), tmp_path)  # a model that never stops: only the caps end its replies
    try:
        title: dict = {}
        writer = threading.Thread(target=lambda: title.update(
            json.loads(server.request("POST", "/v1/chat/completions", RECORDED["title"])[2])))
        writer.start()
        while server.json("GET", "/health")[1]["slots_busy"] < 1:  # the title request holds a slot
            time.sleep(0.01)
        chat, first_chunk_while_title_ran, content = RECORDED["chat"], None, ""
        stream = server.client().chat.completions.create(**chat, stream_options={"include_usage": True})
        usage = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first_chunk_while_title_ran is None:
                first_chunk_while_title_ran = writer.is_alive()
            content += chunk.choices[0].delta.content or "" if chunk.choices else ""
            usage = chunk.usage or usage
        writer.join()
    finally:
        server.stop()
    assert first_chunk_while_title_ran is True  # its own slot: the person watching did not wait for the title
    assert usage is not None and usage.prompt_tokens > OLD_DEFAULT_CONTEXT and content.startswith(" day day")
    assert usage.completion_tokens == DEFAULT_MAX_TOKENS  # no max_tokens sent: the default cap ends it
    assert title["choices"][0]["finish_reason"] == "length"
    assert title["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS

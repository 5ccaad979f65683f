"""A conversation: OpenAI-style messages, their files (save, load, autosave) and its turns."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm4_local.chat.schema import check_messages, check_tools
from glm4_local.core.atomic import publish, refuse_non_regular, temp_path_beside
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.jsonfile import read_json
from glm4_local.core.paths import data_home

Message = dict[str, Any]


def user_message(text: str, documents: Sequence[Mapping[str, str]] = ()) -> Message:
    """The user's message, with the documents that go with it ({"name", "text"} each) as data: the model's
    family writes them into the prompt."""
    message: Message = {"role": "user", "content": text}
    if documents:
        message["documents"] = [{"name": d["name"], "text": d["text"]} for d in documents]
    return message


def sessions_dir() -> Path:
    return data_home() / "sessions"


@dataclass
class Conversation:
    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    context: int | None = None  # the tokens of context it was held in, so a resume reopens it the same

    def to_json(self) -> dict[str, Any]:
        """Always one shape: {"messages": OpenAI-style messages, "tools": the tools (or []), "context": tokens
        of context (or null)}."""
        return {"messages": self.messages, "tools": self.tools or [], "context": self.context}

    @property
    def system_prompt(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first.get("role") == "system" else None

    def set_system(self, text: str | None) -> None:
        if self.messages and self.messages[0].get("role") == "system":
            self.messages.pop(0)
        if text:
            self.messages.insert(0, {"role": "system", "content": text})


def parse_conversation(data: Any, where: str) -> Conversation:
    """A message list or {"messages": [...], "tools": [...]}, checked against OpenAI's shapes."""
    tools, context = None, None
    if isinstance(data, dict):
        tools, context = data.get("tools"), data.get("context")
        data = data.get("messages")
    messages = check_messages(data, where)
    held = context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None
    return Conversation(messages, check_tools(tools, where) if tools else None, held)


def load_conversation(path: Path) -> Conversation:
    return parse_conversation(read_json(path), str(path))


def save_json(path: Path, data: Any) -> None:
    """Write atomically: the previous file stays whole until the new one is complete; only a regular
    file is ever replaced."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        refuse_non_regular(path)
        tmp = temp_path_beside(path)
    except OSError as e:
        raise Glm4LocalError(f"{path}: cannot write ({e.strerror})") from e
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        publish(tmp, path, force=True)
    except OSError as e:
        raise Glm4LocalError(f"{path}: cannot write ({e.strerror})") from e
    finally:
        tmp.unlink(missing_ok=True)


class Autosave:
    """One file per chat session in sessions_dir(), rewritten after every turn."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or sessions_dir() / time.strftime("%Y%m%d-%H%M%S.json")
        if path is None and self.path.exists():
            self.path = self.path.with_name(f"{self.path.stem}-{os.getpid()}.json")

    def save(self, conversation: Conversation) -> None:
        save_json(self.path, conversation.to_json())

    @staticmethod
    def saved() -> list[Path]:
        """The autosaved conversations, newest first."""
        folder = sessions_dir()
        files = [p for p in folder.glob("*.json") if p.is_file()] if folder.is_dir() else []
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)

    @staticmethod
    def latest() -> Path | None:
        saved = Autosave.saved()
        return saved[0] if saved else None


def resume_latest(notify: Callable[[str], None]) -> tuple[Conversation, Autosave]:
    """The newest autosaved conversation that reads back; unreadable newer ones are skipped, saying so."""
    for path in Autosave.saved():
        try:
            return load_conversation(path), Autosave(path)
        except Glm4LocalError as e:
            notify(f"skipped {e}; trying the one before")
    raise Glm4LocalError(f"no saved conversation to resume (they are kept in {sessions_dir()})")


def turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(leading system messages, turns): a turn starts at a user message and runs to the next one."""
    head: list[Message] = []
    groups: list[list[Message]] = []
    for message in messages:
        if not groups and message.get("role") == "system":
            head.append(message)
        elif message.get("role") == "user" or not groups:
            groups.append([message])
        else:
            groups[-1].append(message)
    return head, groups

"""`pull`, `list` and `rm`, and the first run's offer to pull a model: the store's commands as the user
sees them (results on `out`; notes, progress and questions on `err`)."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console

from glm4_local.chat.models import resolve_model
from glm4_local.core.errors import NoModelError
from glm4_local.core.paths import store_dir
from glm4_local.core.words import decimal_size
from glm4_local.frontends.progress import RichProgress
from glm4_local.frontends.visible import visible
from glm4_local.store.catalog import DEFAULT_MODEL
from glm4_local.store.records import installed, partial_downloads, remove, remove_partial

INTERRUPTED = "interrupted; what was downloaded is kept, and the same pull resumes it"


def pull_model(name: str | None, revision: str | None, outtype: str | None, force: bool, quiet: bool,
               out: Console, err: Console) -> Path:
    """Pull, saying what is fetched and what was fixed; the model's path on `out`."""
    from glm4_local.store.pull import pull  # the converter and repair behind it: not on every chat's start

    bar = RichProgress(err) if err.is_terminal and not quiet else None

    def say(line: str) -> None:  # it may quote what a downloaded file says of itself
        err.print(visible(line), markup=False, highlight=False)

    with bar or nullcontext():
        result = pull(name, revision=revision, outtype=outtype, force=force, progress=bar, notify=say)
    origin = result.origin
    if not result.fresh:
        say(f"{result.path.stem} is up to date ({origin.describe()}); nothing was downloaded")
    else:
        for change in origin.repaired:
            say(f"repaired: {change}")
        if origin.file and not origin.repaired:
            say("checked: its tokenizer, stop tokens and template were already right")
        if result.checked:
            say(result.checked)
        say(f"ready: {result.path.stem} ({decimal_size(result.path.stat().st_size)}); chat with: "
            f"glm4-local chat {result.path.stem}")
    out.print(str(result.path), markup=False, highlight=False)
    return result.path


def list_models(as_json: bool, out: Console) -> None:
    rows = installed()
    parts = partial_downloads()
    if as_json:
        data = {"models": [r.as_json() for r in rows], "store": str(store_dir()),
                "partial_downloads": [{"path": str(p), "bytes": n} for p, n in parts]}
        out.print(json.dumps(data, ensure_ascii=False, indent=2), markup=False, highlight=False)
        return
    if not rows:
        out.print(f"no models yet (the store is {store_dir()}); get one with: glm4-local pull", markup=False)
    else:
        width = max(len(r.name) for r in rows)
        out.print(f"{'NAME':<{width}}  {'SIZE':>8}  {'QUANT':<8} {'CONTEXT':>8}  {'REPAIRED':<19} FROM",
                  markup=False, highlight=False)
        for r in rows:
            context = f"{r.context:,}" if r.context else "-"
            origin = r.origin if r.path.parent == store_dir() else f"{r.origin} in {r.path.parent}"
            out.print(visible(f"{r.name:<{width}}  {decimal_size(r.size):>8}  {r.quantization:<8} {context:>8}  "
                              f"{r.repaired:<19} {origin}"), markup=False, highlight=False)
    for path, size in parts:
        out.print(f"(an interrupted download: {decimal_size(size)} in {path}; the same pull resumes it, "
                  "`glm4-local rm --partial` removes it)", markup=False, highlight=False)


def remove_models(names: list[str], partial: bool, out: Console) -> None:
    for name in names:
        path, size = remove(name)
        out.print(f"removed {path.stem} ({decimal_size(size)}) from {path.parent}", markup=False, highlight=False)
    if partial:
        for path, size, removed in remove_partial():
            what = "removed" if removed else "left (a pull is writing it)"
            out.print(f"{what}: an unfinished download ({decimal_size(size)}), {path.name}", markup=False,
                      highlight=False)


def model_or_first_pull(name: str | None, err: Console) -> Path:
    """The model `name` means; on a first run (no model anywhere) in a terminal, offer to pull the default
    one (its size and where it goes, y/N); elsewhere the one line that names the command."""
    try:
        return resolve_model(name)
    except NoModelError:
        if name is not None or not (sys.stdin is not None and sys.stdin.isatty() and err.is_terminal):
            raise
    quant = DEFAULT_MODEL.default_quant
    size = DEFAULT_MODEL.sizes_gb.get(quant)
    err.print(f"No model yet. Pull {DEFAULT_MODEL.name} ({quant}, about {size} GB, from "
              f"{DEFAULT_MODEL.repo} on the Hugging Face Hub) into {store_dir()}? [y/N] ",
              markup=False, highlight=False, end="")
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise NoModelError("no model; get one with: glm4-local pull") from None
    return pull_model(None, None, None, False, False, Console(quiet=True), err)

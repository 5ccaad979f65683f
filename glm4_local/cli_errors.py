"""The CLI's edge: library errors, interrupts, termination signals and a failing stdout become one line
on stderr and an exit code, never a traceback."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console

from glm4_local.core.errors import Glm4LocalError, Interrupted, OutputExistsError, SourceNotCachedError
from glm4_local.frontends.visible import visible

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
R = TypeVar("R")


def run_program(program: Callable[[], object]) -> None:
    """Run the Typer app and exit with its status; stdout failing on the way (a full disk) or at the
    last flush is one line too."""
    code: Any = 0
    try:
        program()
    except SystemExit as e:
        code = e.code
    except OSError as e:
        code = _stdout_failed(e)
    try:
        sys.stdout.flush()
    except OSError as e:
        code = _stdout_failed(e)
    sys.exit(code)


def _stdout_failed(error: OSError) -> int:
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's own flush at exit must not fail again
    if isinstance(error, BrokenPipeError):
        return 0
    err.print(f"glm4-local: error: cannot write the output ({error.strerror or error})", markup=False)
    return 1


def fail(message: str, code: int = 1) -> typer.Exit:
    # a message may quote a file's or a server's own words: their control characters are shown, not obeyed
    err.print(f"glm4-local: error: {visible(message)}", markup=False)
    return typer.Exit(code)


def with_hint(error: Glm4LocalError) -> str:
    """The library's message, plus what to type about it (only the CLI knows its flags)."""
    if isinstance(error, OutputExistsError):
        return f"{error} (use --force to overwrite)"
    if isinstance(error, SourceNotCachedError):
        repo = error.repo_id
        return (f"{error}; download it with `glm4-local convert {repo} --download`, or get it converted "
                f"into the store with `glm4-local pull {repo}`")
    return str(error)


@contextmanager
def user_errors(on_interrupt: str = "interrupted") -> Iterator[None]:
    """Library exceptions become one line on stderr and an exit code; never a traceback."""
    try:
        yield
    except Glm4LocalError as e:
        raise fail(with_hint(e), e.exit_code) from None
    except KeyboardInterrupt as e:
        number = e.signal_number if isinstance(e, Interrupted) else signal.SIGINT
        message = str(e) or (on_interrupt if number == signal.SIGINT
                             else f"{signal.Signals(number).name}: {on_interrupt.replace('interrupted', 'stopped')}")
        raise fail(message, 128 + number) from None
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise typer.Exit(0) from None
    except OSError as e:
        if e.filename is not None or not _is_stdout_error():
            raise
        raise typer.Exit(_stdout_failed(e)) from None


def _is_stdout_error() -> bool:
    """Whether stdout is what failed (a full disk or a device that refuses writes)."""
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return False


def run(func: Callable[..., R], *args: object, on_interrupt: str = "interrupted", **kwargs: object) -> R:
    with user_errors(on_interrupt):
        return func(*args, **kwargs)


@contextmanager
def stopped_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal, `kill`, a service stop) clean up as Ctrl-C does: no half
    file or 16-bit intermediate, no kernel or tool server is left behind. Only where the main thread runs
    the work."""

    def stop(number: int, frame: object) -> None:
        raise Interrupted(signal_number=number)

    numbers = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]  # no SIGHUP on Windows
    # one that arrives ignored stays ignored: `nohup glm4-local ...` must outlive its terminal
    previous = {s: signal.signal(s, stop) for s in numbers if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def parsed(flag: str, parse: Callable[[str], R], text: str) -> R:
    """An option's typed value; a value it cannot take is one line naming the flag."""
    try:
        return parse(text)
    except ValueError as e:
        raise fail(f"{flag} {e}") from None



"""A Jupyter kernel (ipykernel) in its own process, talked to over IPC sockets in a private folder.

IPC, not TCP loopback: the sandbox has no network at all, so the sockets are files in a folder that
both sides see. Interrupts go as Jupyter messages on the control channel (the sandbox's process IDs
are not ours to signal). A kernel that does not come back from an interrupt is killed with its
process group and started again at the next call.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.extras import needs

START_TIMEOUT = 30.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted cell has to stop before the kernel is killed
KERNEL_ARGS = ("-m", "ipykernel_launcher", "--HistoryManager.enabled=False", "--IPKernelApp.quiet=True",
               "--Session.debug=False")


@contextlib.contextmanager
def _sigint_held() -> Iterator[Callable[[Callable[[], None] | None], Callable[[], None] | None]]:
    """Hold Ctrl-C back from this thread while a child is forked, and hand it over once it is: Python runs
    its at-fork hooks (logging's lock) in the parent, and a KeyboardInterrupt raised inside one is printed
    and dropped, losing the user's Ctrl-C. Yields what makes the child's setup restore the signal mask."""
    if not hasattr(signal, "pthread_sigmask"):
        yield lambda setup: setup
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def child_setup(setup: Callable[[], None] | None) -> Callable[[], None]:
        def run() -> None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)  # the kernel is interrupted by SIGINT
            if setup is not None:
                setup()
        return run

    try:
        yield child_setup
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a Ctrl-C held meanwhile arrives now


class KernelError(Glm4LocalError):
    """The kernel could not start, or died."""


def _client_class() -> Any:
    try:
        from jupyter_client.blocking import BlockingKernelClient
        from jupyter_client.connect import write_connection_file
    except ImportError:
        raise KernelError(needs("the python tool", "code", "jupyter_client", "ipykernel")) from None
    return BlockingKernelClient, write_connection_file


@dataclass
class CellResult:
    """What a cell sent back: its output messages (stream, execute_result, display_data, error) in order."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False
    status: str = "ok"


Wrap = Callable[[Sequence[str], Path, Path], list[str]]  # (argv, data folder, socket folder) -> argv


class Kernel:
    """One kernel: started on first use, its state kept between cells, ended by close()."""

    def __init__(self, data_dir: Path, wrap: Wrap | None, preexec: Callable[[], None] | None = None) -> None:
        self.data_dir = data_dir
        self.wrap = wrap
        self.preexec = preexec
        self.process: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.ipc_dir: Path | None = None
        self.running: str | None = None  # the message id of the cell running (what an interrupt stops)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        client_class, write_connection_file = _client_class()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # short and private: a Unix socket path holds at most 107 bytes
        self.ipc_dir = Path(tempfile.mkdtemp(prefix="glm4k-"))
        connection, _ = write_connection_file(str(self.ipc_dir / "kernel.json"), transport="ipc",
                                              ip=str(self.ipc_dir / "s"), key=secrets.token_hex(32).encode())
        argv = [sys.executable, *KERNEL_ARGS, "-f", connection]
        if self.wrap is not None:
            argv = self.wrap(argv, self.data_dir, self.ipc_dir)
        log = open(self.ipc_dir / "kernel.log", "wb")  # noqa: SIM115 (kept by the child)
        try:
            with _sigint_held() as child_setup:
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                cwd=self.data_dir, start_new_session=True,
                                                preexec_fn=child_setup(self.preexec))
        except OSError as e:
            raise KernelError(f"cannot start the python kernel: {e.strerror}") from e
        finally:
            log.close()
        self.client = client_class(connection_file=connection)
        self.client.load_connection_file()
        self.client.start_channels()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive:
                raise KernelError(f"the python kernel exited at start: {self._log_tail()}")
            with contextlib.suppress(RuntimeError, queue.Empty):
                self.client.wait_for_ready(timeout=0.25)
                return
        self.close()
        raise KernelError(f"the python kernel did not start within {START_TIMEOUT:g} s")

    def _log_tail(self) -> str:
        assert self.ipc_dir is not None
        try:
            lines = (self.ipc_dir / "kernel.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return lines[-1][:300] if lines else "no output"

    def execute(self, code: str, timeout: float) -> CellResult:
        """Run a cell; outputs until the kernel is idle again. Past `timeout` the cell is interrupted."""
        if not self.alive:
            if self.process is not None:
                self.close()
            self.start()
        # stop_on_error off: a cell sent just after an interrupted one is run, not aborted with it
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        self.running = msg_id
        result = CellResult()
        try:
            self._collect(msg_id, time.monotonic() + timeout, result)
        except KeyboardInterrupt:
            self.interrupt()
            raise
        finally:
            self.running = None
        return result

    def _collect(self, msg_id: str, deadline: float, result: CellResult) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                result.timed_out = True
                self.interrupt()
                return
            try:
                message = self.client.get_iopub_msg(timeout=min(left, 0.2))
            except queue.Empty:
                if not self.alive:
                    raise KernelError(f"the python kernel died (exit status {self.process.returncode}); "
                                      "its variables are lost, and it starts again at the next call") from None
                continue
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                return
            if kind in ("stream", "execute_result", "display_data", "error"):
                result.outputs.append({"output_type": kind, **content})
                if kind == "error":
                    result.status = "error"

    def interrupt(self) -> None:
        """Stop the running cell (a message on the control channel); kill the kernel if it does not stop."""
        cell, self.running = self.running, None
        if not self.alive or cell is None:
            return
        self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))
        deadline = time.monotonic() + INTERRUPT_GRACE
        while time.monotonic() < deadline:
            try:
                message = self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if (message["msg_type"] == "status" and message["content"].get("execution_state") == "idle"
                    and message.get("parent_header", {}).get("msg_id") == cell):
                return
        self.close()  # it did not listen: a fresh kernel at the next call

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            self.client = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
            self.ipc_dir = None

"""A Jupyter kernel (ipykernel) in its own process, talked to over IPC sockets in a private folder.

IPC, not TCP loopback: the sandbox has no network at all, so the sockets are files in a folder that
both sides see. Interrupts go as Jupyter messages on the control channel (the sandbox's process IDs
are not ours to signal). A kernel that does not come back from an interrupt is killed with its
process group and started again at the next call.

Everything the kernel sends is untrusted (the code can write raw messages on its sockets): no message
over MAX_MESSAGE_BYTES reaches this process (ZeroMQ drops it), and a cell keeps at most MAX_OUTPUTS
outputs, MAX_KEPT_CHARS of text in each and MAX_IMAGES pictures (cell.py). The kernel never imports
from its working folder (the data folder, where the code writes) while it starts: it runs in Python's
isolated mode with IPython's `ignore_cwd`, and the folder is put at the end of `sys.path` afterwards,
so the model can import its own modules but no file there shadows one that exists.
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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glm4_local.core.errors import Glm4LocalError
from glm4_local.tools.cell import CellResult
from glm4_local.tools.extras import needs
from glm4_local.tools.sandbox import Launch
from glm4_local.tools.spawner import SpawnInterrupted, spawn

START_TIMEOUT = 30.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted cell has to stop before the kernel is killed
REPLY_GRACE = 1.0  # seconds to wait for the cell's "idle" once its reply came (a dropped message lost it)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
POLL = 0.2
KERNEL_ARGS = ("-I", "-m", "ipykernel_launcher", "--IPKernelApp.ignore_cwd=True", "--HistoryManager.enabled=False",
               "--IPKernelApp.quiet=True", "--Session.debug=False")
# after start: the data folder last on the path, so that `import helper` finds a module the model wrote
SETUP_CELL = "import os as _o, sys as _s\n_s.path.append(_o.getcwd())\ndel _o, _s"
Launcher = Callable[[Sequence[str], Path, Path], Launch]  # (argv, data folder, socket folder) -> how to start it
Check = Callable[[], "str | None"]  # asked while a cell runs: a reason to end the kernel, or None


class KernelError(Glm4LocalError):
    """The kernel could not start, or died."""


def _client_class() -> Any:
    try:
        import zmq
        from jupyter_client.blocking import BlockingKernelClient
        from jupyter_client.connect import write_connection_file
    except ImportError:
        raise KernelError(needs("the python tool", "code", "jupyter_client", "ipykernel")) from None
    return BlockingKernelClient, write_connection_file, zmq


def unconfined(argv: Sequence[str], data_dir: Path, ipc_dir: Path) -> Launch:
    """The kernel as the user's own process (each cell is confirmed by the user first)."""
    return Launch(list(argv), dict(os.environ), None)


class Kernel:
    """One kernel: started on first use, its state kept between cells, ended by close()."""

    def __init__(self, data_dir: Path, launcher: Launcher) -> None:
        self.data_dir = data_dir
        self.launcher = launcher
        self.process: subprocess.Popen[bytes] | None = None
        self.launch: Launch | None = None
        self.client: Any = None
        self.context: Any = None
        self.monitor: Any = None
        self.ipc_dir: Path | None = None
        self.running: str | None = None  # the message id of the cell running (what an interrupt stops)
        self.stop_requested = threading.Event()  # set from another thread: the running cell is interrupted

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        client_class, write_connection_file, zmq = _client_class()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # short and private: a Unix socket path holds at most 107 bytes
        self.ipc_dir = Path(tempfile.mkdtemp(prefix="glm4k-"))
        connection, _ = write_connection_file(str(self.ipc_dir / "kernel.json"), transport="ipc",
                                              ip=str(self.ipc_dir / "s"), key=secrets.token_hex(32).encode())
        try:
            self.launch = self.launcher([sys.executable, *KERNEL_ARGS, "-f", connection], self.data_dir, self.ipc_dir)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            self.close()
            raise KernelError(f"cannot prepare the sandbox for the python kernel: {e}") from e
        log = open(self.ipc_dir / "kernel.log", "wb")  # noqa: SIM115 (kept by the child)
        try:
            self.process = spawn(self.launch.argv, self.launch.preexec, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=log, cwd=self.data_dir, env=self.launch.env, start_new_session=True,
                                 pass_fds=self.launch.pass_fds)
        except SpawnInterrupted as e:
            self.process = e.process
            self.close()
            raise
        except OSError as e:
            self.close()
            raise KernelError(f"cannot start the python kernel: {e.strerror}") from e
        finally:
            log.close()
            if self.launch is not None:
                self.launch.started()
        self.context = zmq.Context()
        self.context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # larger messages never reach us
        self.context.setsockopt(zmq.LINGER, 0)
        self.client = client_class(connection_file=connection, context=self.context)
        self.client.load_connection_file()
        self.client.start_channels(stdin=False, hb=False)  # no input asked; alive is the process's state
        self._watch_output()
        self._wait_ready()
        self.client.execute(SETUP_CELL, silent=True, store_history=False)

    def _wait_ready(self) -> None:
        """Until the kernel answers a kernel_info request and its output socket is connected (a message
        arrives on it), then its start-up output is dropped. The channels' own blocking calls, here and
        below: the client's get_*_msg and wait_for_ready run each in an asyncio loop made for the thread
        and left open, and the server's worker threads come and go (the garbage collector closing such a
        loop may find its sockets closed first, and prints a traceback)."""
        deadline = time.monotonic() + START_TIMEOUT
        asked: set[str] = set()
        while time.monotonic() < deadline:
            if not self.alive:
                raise KernelError(f"the python kernel exited at start: {self._log_tail()}")
            asked.add(self.client.kernel_info())
            with contextlib.suppress(queue.Empty):
                reply = self.client.shell_channel.get_msg(timeout=0.5)
                if reply.get("parent_header", {}).get("msg_id") in asked:
                    self.client.iopub_channel.get_msg(timeout=0.5)
                    with contextlib.suppress(queue.Empty):
                        while True:
                            self.client.iopub_channel.get_msg(timeout=POLL)
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

    def execute(self, code: str, timeout: float, check: Check | None = None) -> CellResult:
        """Run a cell; outputs until the kernel is idle again. Past `timeout` the cell is interrupted;
        when `check` gives a reason, the kernel is ended at once (the reason is the result's `stopped`)."""
        if not self.alive:
            if self.process is not None:
                self.close()
            self.start()
        self.stop_requested.clear()
        # stop_on_error off: a cell sent just after an interrupted one is run, not aborted with it
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        self.running = msg_id
        result = CellResult()
        try:
            self._collect(msg_id, time.monotonic() + timeout, result, check)
            result.lost += self._disconnections()
        except KeyboardInterrupt:
            self.interrupt()
            raise
        finally:
            self.running = None
        return result

    def _collect(self, msg_id: str, deadline: float, result: CellResult, check: Check | None) -> None:
        replied: float | None = None  # when the shell channel said the cell is done
        next_check = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline or self.stop_requested.is_set():
                result.timed_out = now >= deadline
                result.interrupted = not result.timed_out
                self.interrupt()
                return
            if check is not None and now >= next_check:
                next_check = now + POLL
                if (reason := check()) is not None:
                    result.stopped = reason
                    self.close()
                    return
            if replied is not None and now - replied > REPLY_GRACE:
                return  # the "idle" status was lost (a message dropped for its size): the reply is enough
            result.lost += self._disconnections()
            try:
                message = self.client.iopub_channel.get_msg(timeout=min(deadline - now, POLL))
            except queue.Empty:
                replied = replied or self._replied(msg_id)
                if not self.alive:
                    raise KernelError(self._death()) from None
                continue
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                return
            result.add(kind, content)

    def _watch_output(self) -> None:
        """ZeroMQ refuses a message over the size limit by closing the connection, for good: a monitor of
        the output socket tells when that happened (the cell then says something was lost)."""
        import zmq

        self.monitor = self.client.iopub_channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def _disconnections(self) -> int:
        """How often the output socket was cut since last asked; each time, it is connected again."""
        count = 0
        with contextlib.suppress(Exception):
            while self.monitor is not None and self.monitor.poll(0):
                self.monitor.recv_multipart()
                count += 1
        if count:
            self._reconnect_output()
        return count

    def _reconnect_output(self) -> None:
        self.monitor.close(linger=0)
        self.client.iopub_channel.close()
        self.client._iopub_channel = None  # jupyter_client makes the channel again when next asked for it
        self.client.iopub_channel.start()
        self._watch_output()

    def _replied(self, msg_id: str) -> float | None:
        """Now, if the shell channel has the cell's execute_reply (read without waiting)."""
        with contextlib.suppress(queue.Empty):
            while True:
                reply = self.client.shell_channel.get_msg(timeout=0)
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    return time.monotonic()
        return None

    def _death(self) -> str:
        assert self.process is not None
        status = self.process.returncode
        if self.launch is not None and self.launch.group is not None and self.launch.group.out_of_memory():
            why = "it ran out of the memory the sandbox may use"
        elif status == -signal.SIGKILL:
            why = "it was killed (out of memory?)"
        else:
            why = f"exit status {status}"
        return f"the python kernel died ({why}); its variables are lost, and it starts again at the next call"

    def request_stop(self) -> None:
        """From another thread: interrupt the running cell (the executing thread does it, within POLL s)."""
        self.stop_requested.set()

    def interrupt(self) -> None:
        """Stop the running cell (a message on the control channel); kill the kernel if it does not stop.
        Only from the thread that runs the cell."""
        cell, self.running = self.running, None
        if not self.alive or cell is None:
            return
        self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))
        deadline = time.monotonic() + INTERRUPT_GRACE
        while time.monotonic() < deadline:
            try:
                message = self.client.iopub_channel.get_msg(timeout=POLL)
            except queue.Empty:
                continue
            if (message["msg_type"] == "status" and message["content"].get("execution_state") == "idle"
                    and message.get("parent_header", {}).get("msg_id") == cell):
                return
        self.close()  # it did not listen: a fresh kernel at the next call

    def close(self) -> None:
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.close(linger=0)
            self.monitor = None
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            self.client = None
        if self.context is not None:
            with contextlib.suppress(Exception):
                self.context.destroy(linger=0)
            self.context = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        if self.launch is not None:
            self.launch.close()
            self.launch = None
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
            self.ipc_dir = None

"""GLM-4's `python` tool: a real Jupyter kernel, in bubblewrap, answering as THUDM's demo answers."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.marks import SANDBOX, needs_sandbox

from glm4_local.tools.python_tool import DECLINED, TIMED_OUT, PythonTool
from glm4_local.tools.sandbox import Limits, python_roots

pytestmark = pytest.mark.processes  # Jupyter kernels

pytest.importorskip("ipykernel", reason="the python tool needs the [code] extra (jupyter_client, ipykernel)")


def png(width: int = 3, height: int = 2) -> bytes:
    """A tiny red PNG, made without any imaging library (the kernel builds the same one)."""
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


PLOT = f"from IPython.display import Image, display\nimport base64\ndisplay(Image(data=base64.b64decode(" \
       f"{base64.b64encode(png()).decode()!r})))"


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PythonTool]:
    if SANDBOX is None:
        pytest.skip("no sandbox on this machine")
    tool = PythonTool(tmp_path_factory.mktemp("data"), SANDBOX, timeout=20, limits=Limits(memory_bytes=2 * 1024**3))
    yield tool
    tool.close()


def run(tool: PythonTool, code: str) -> str:
    [observation] = tool.run("python", code)
    assert observation.metadata == ""  # python results carry no metadata: <|observation|>\n{text}
    return observation.content


@needs_sandbox
def test_state_persists_between_calls(sandboxed: PythonTool) -> None:
    assert run(sandboxed, "x = 6 * 7") == ""  # no output: the demo's empty result
    assert run(sandboxed, "x") == "42"  # a result's text/plain
    assert run(sandboxed, "print(x)\nprint('done')") == "42\ndone\n"  # a stream's text
    assert run(sandboxed, "print('first')\nx + 1") == "43"  # the last output wins, as in the demo


@needs_sandbox
def test_an_error_is_its_traceback_without_colours(sandboxed: PythonTool) -> None:
    text = run(sandboxed, "def f():\n    return 1 / 0\nf()")
    assert "ZeroDivisionError: division by zero" in text and "\x1b" not in text and "Traceback" in text
    assert run(sandboxed, "x") == "42"  # the kernel goes on


@needs_sandbox
def test_files_in_mnt_data_land_in_the_data_folder(sandboxed: PythonTool) -> None:
    assert run(sandboxed, "import os\nopen('/mnt/data/out.csv', 'w').write('a,b\\n1,2\\n')\nos.getcwd()") == \
        "'/mnt/data'"
    assert (sandboxed.data_dir / "out.csv").read_text() == "a,b\n1,2\n"
    (sandboxed.data_dir / "given.txt").write_text("from the user")
    assert run(sandboxed, "print(open('/mnt/data/given.txt').read())") == "from the user\n"


@needs_sandbox
def test_a_picture_is_image_for_the_model_and_a_png_for_the_user(sandboxed: PythonTool) -> None:
    [observation] = sandboxed.run("python", PLOT)
    assert observation.content == "[Image]" and observation.image is not None
    assert observation.image.parent == sandboxed.data_dir and observation.image.read_bytes() == png()


@needs_sandbox
def test_a_picture_before_printed_text_is_still_shown(sandboxed: PythonTool) -> None:
    [observation] = sandboxed.run("python", PLOT + "\nprint('done')")
    assert observation.content == "done\n"  # the model reads the last output, as GLM-4 was trained
    assert observation.image is not None and observation.image.read_bytes() == png()


@needs_sandbox
def test_long_output_is_cut_with_a_note(sandboxed: PythonTool) -> None:
    text = run(sandboxed, "print('y' * 100_000)")
    assert text.startswith("yyyy") and len(text) < 21_000 and text.endswith("of 100,001 characters]")


@needs_sandbox
def test_an_endless_loop_times_out_and_the_kernel_keeps_its_state(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=1.5)
    try:
        assert run(tool, "kept = 'yes'") == ""
        [observation] = tool.run("python", "while True:\n    pass")
        assert observation.content == TIMED_OUT
        assert run(tool, "print(kept)") == "yes\n"  # interrupted, not restarted
    finally:
        tool.close()


@pytest.fixture
def outside_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 outside the sandbox, answering b"reached" to whoever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connection.sendall(b"reached")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


CONNECT = ("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
           "print(s.recv(16).decode())")


@needs_sandbox
def test_no_network_inside(sandboxed: PythonTool, outside_server: int, tmp_path: Path) -> None:
    text = run(sandboxed, CONNECT.format(port=outside_server))
    assert "reached" not in text and ("ConnectionRefusedError" in text or "OSError" in text), text
    # the same code without the sandbox does reach it: the test server is there
    unconfined = PythonTool(tmp_path / "plain", None, timeout=10, confirm=lambda code: True)
    try:
        assert run(unconfined, CONNECT.format(port=outside_server)) == "reached\n"
    finally:
        unconfined.close()


@needs_sandbox
def test_no_files_outside_the_data_folder(sandboxed: PythonTool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    text = run(sandboxed, f"print(open({str(secret)!r}).read())")
    assert "FileNotFoundError" in text and "private" not in text
    target = tmp_path / "written.txt"
    assert "Error" in run(sandboxed, f"open({str(target)!r}, 'w').write('x')") and not target.exists()
    assert "Read-only file system" in run(sandboxed, "open('/usr/escape', 'w')")


@needs_sandbox
def test_the_home_folder_is_not_there(sandboxed: PythonTool) -> None:
    home = str(Path.home())
    visible = run(sandboxed, f"import os\nprint(sorted(os.listdir({home!r})) if os.path.isdir({home!r}) else [])")
    # only the path down to the Python installation, if it lives in the home folder (pyenv), nothing else
    allowed = {Path(root).relative_to(home).parts[0] for root in python_roots() if root.startswith(home + os.sep)}
    assert set(eval(visible)) <= allowed, visible
    assert "HOME=/tmp" in run(sandboxed, "import os\nprint('HOME=' + os.environ['HOME'])")


@needs_sandbox
def test_memory_is_limited(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=20, limits=Limits(memory_bytes=1024**3))
    try:
        assert "MemoryError" in run(tool, "b = bytearray(3 * 1024 ** 3)")
        assert run(tool, "import resource\nresource.getrlimit(resource.RLIMIT_AS)[0] == 1024 ** 3") == "True"
    finally:
        tool.close()


def test_unconfined_code_runs_only_when_confirmed(tmp_path: Path) -> None:
    asked: list[str] = []
    tool = PythonTool(tmp_path / "data", None, timeout=10, confirm=lambda code: asked.append(code) or False)
    try:
        assert run(tool, "print('ran')") == DECLINED and asked == ["print('ran')"]
        assert tool.kernel.process is None  # nothing was started
    finally:
        tool.close()
    with pytest.raises(ValueError):
        PythonTool(tmp_path, None)


@needs_sandbox
def test_a_dead_kernel_is_an_observation_and_restarts(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=20)
    try:
        assert run(tool, "y = 1") == ""
        [observation] = tool.run("python", "import os\nos._exit(3)")
        assert observation.metadata == "system_error" and "died" in observation.content
        assert "NameError" in run(tool, "y")  # a fresh kernel: the state is gone, and said to be
    finally:
        tool.close()


@needs_sandbox
def test_a_planted_link_does_not_make_the_picture_land_outside(tmp_path: Path) -> None:
    """The code may leave `image-1.png` as a link to a file outside the sandbox; glm4-local, which writes
    the picture unconfined, must not follow it."""
    target = tmp_path / "outside" / "planted.png"
    target.parent.mkdir()
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=20)
    try:
        assert run(tool, f"import os\nos.symlink({str(target)!r}, '/mnt/data/image-1.png')") == ""
        [observation] = tool.run("python", PLOT)
        assert observation.image is not None and observation.image.name == "image-2.png"
        assert not target.exists() and observation.image.read_bytes() == png()
    finally:
        tool.close()


@needs_sandbox
def test_a_kernel_outlives_the_thread_that_started_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs tool calls on worker threads that end after 10 s idle. The sandbox ends its child
    when the thread that forked it ends (PR_SET_PDEATHSIG): a conversation's variables were lost with it.
    And an asyncio loop made for a call into the kernel client and left open is closed by the garbage
    collector, which may close its sockets first and print `Exception ignored in BaseEventLoop.__del__`
    into the server's output (it did, in CI): no call makes one."""
    import asyncio
    import contextvars

    made: list[object] = []
    new_event_loop = asyncio.new_event_loop
    monkeypatch.setattr(asyncio, "new_event_loop", lambda: made.append(1) or new_event_loop())
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=20)
    outputs: list[str] = []
    try:
        for code in ("kept = 'yes'", "print(kept)", "print(kept * 2)"):  # the first starts the kernel
            thread = threading.Thread(target=contextvars.copy_context().run,
                                      args=(lambda code=code: outputs.append(run(tool, code)),))
            thread.start()
            thread.join()
            assert tool.kernel.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                tool.kernel.process.wait(timeout=0.5)  # PR_SET_PDEATHSIG's kill, had the thread's end sent it
    finally:
        tool.close()
    assert outputs == ["", "yes\n", "yesyes\n"] and made == []

"""The sandbox the model's code runs in, under hostile code: wherever Python lives, nothing of the host's
environment inside, limits that bound the whole sandbox, files the code wrote never run as code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.marks import SANDBOX, needs_sandbox

from glm4_local.tools.cell import MAX_IMAGES, MAX_KEPT_CHARS, MAX_OUTPUTS, CellResult
from glm4_local.tools.cgroups import find_cgroups
from glm4_local.tools.python_tool import PythonTool
from glm4_local.tools.sandbox import Limits, check_sandbox

pytestmark = pytest.mark.processes  # sandboxed kernels and programs

pytest.importorskip("ipykernel", reason="the python tool needs the [code] extra (jupyter_client, ipykernel)")
BOUNDED_WHOLE = SANDBOX is not None and SANDBOX.kind == "bubblewrap" and find_cgroups() is not None
needs_cgroup = pytest.mark.skipif(not BOUNDED_WHOLE, reason="no cgroup for the sandbox on this machine: its memory "
                                  "is bounded per process only (doctor says so)")


def run(tool: PythonTool, code: str) -> str:
    [observation] = tool.run("python", code)
    return observation.content


def make_venv(folder: Path) -> Path:
    """A virtual environment of this Python (seeing its packages, glm4-local's among them)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)],
                   check=True, timeout=120)
    return folder / "bin" / "python"


@pytest.fixture
def home_folder() -> Iterator[Path]:
    """A folder of the test's own under the home folder (removed after), for a venv that lives there."""
    home = Path.home()
    if not os.access(home, os.W_OK):
        pytest.skip(f"the home folder {home} is not writable here")
    folder = Path(tempfile.mkdtemp(prefix=".glm4-local-test-", dir=home))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.isfile(p)), None)


@needs_sandbox
@pytest.mark.parametrize("where", ["venv under /tmp", "venv under $HOME", "system Python"])
def test_a_sandboxed_print_works_wherever_python_lives(where: str, tmp_path: Path, request: pytest.FixtureRequest
                                                       ) -> None:
    assert SANDBOX is not None
    if where == "system Python":
        if SYSTEM_PYTHON is None:
            pytest.skip("no system Python in /usr/bin or /usr/local/bin")
        python = SYSTEM_PYTHON
    else:
        base = tmp_path if where == "venv under /tmp" else request.getfixturevalue("home_folder")
        python = str(make_venv(base / "venv"))
    checked = check_sandbox(SANDBOX, python)
    assert checked.ok, checked.output


@needs_sandbox
def test_the_kernel_starts_from_a_venv_under_tmp(tmp_path: Path) -> None:
    """The reported failure: bwrap mounted its private /tmp over a venv that lived there."""
    python = make_venv(Path(tempfile.mkdtemp(prefix="glm4-local-venv-", dir="/tmp")) / "venv")
    try:
        script = ("import sys; from pathlib import Path; from glm4_local.tools.python_tool import PythonTool\n"
                  "from glm4_local.tools.sandbox import find_sandbox\n"
                  "tool = PythonTool(Path(sys.argv[1]), find_sandbox(), timeout=30)\n"
                  "print(repr(tool.run('python', 'import sys; print(sys.prefix)')[0].content)); tool.close()")
        done = subprocess.run([str(python), "-c", script, str(tmp_path / "data")], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert eval(done.stdout) == f"{python.parent.parent}\n", done.stdout  # the venv's own Python ran it
    finally:
        shutil.rmtree(python.parent.parent.parent, ignore_errors=True)


@needs_sandbox
def test_nothing_of_the_host_environment_is_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM4_LOCAL_API_KEY", "sk-host-secret-1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-host-secret-5678")
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=30)
    try:
        seen = run(tool, "import os\nfound = dict(os.environ)\n"
                         "for pid in os.listdir('/proc'):\n"
                         "    if pid.isdigit():\n"
                         "        try: found[pid] = open(f'/proc/{pid}/environ', 'rb').read().decode()\n"
                         "        except OSError as e: found[pid] = str(e)\n"
                         "print(found)")
        assert "1" in eval(seen)  # PID 1 (bubblewrap) was read, and it holds nothing of ours
        assert "host-secret" not in seen
    finally:
        tool.close()


@needs_sandbox
@needs_cgroup
def test_memory_is_bounded_for_the_whole_sandbox(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=60, limits=Limits(memory_bytes=2 * 1024**3))
    try:
        # each child holds 1.2 GiB until told to go (its stdin closed), once all three have held or died: those
        # still alive then held together; waiting on events, not on time, so a slow machine cannot pass them
        hogs = ("import subprocess, sys\n"
                "code = \"import sys; b = b'x' * (1200 * 2**20); print('held', flush=True); sys.stdin.read()\"\n"
                "ps = [subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, "
                "text=True) for _ in range(3)]\n"
                "seen = [p.stdout.readline() for p in ps]\n"
                "for p in ps:\n"
                "    p.stdin.close()\n"
                "print(sum(p.wait() == 0 and line == 'held\\n' for p, line in zip(ps, seen)))")
        assert run(tool, hogs) in ("0\n", "1\n")  # 3 × 1.2 GiB never held together in 2 GiB
        assert run(tool, "print('alive')") == "alive\n"
    finally:
        tool.close()


@needs_sandbox
def test_tmp_shm_and_dev_are_bounded(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=60,
                      limits=Limits(tmp_bytes=64 * 2**20, shm_bytes=16 * 2**20))
    try:
        fill = "try:\n    open({path!r}, 'wb').write(b'x' * {size})\n    print('wrote')\nexcept OSError as e:\n" \
               "    print(e.strerror)"
        assert run(tool, fill.format(path="/tmp/big", size=100 * 2**20)) == "No space left on device\n"
        assert run(tool, fill.format(path="/dev/shm/big", size=32 * 2**20)) == "No space left on device\n"
        assert run(tool, fill.format(path="/dev/big", size=1)) == "Read-only file system\n"
    finally:
        tool.close()


@needs_sandbox
@pytest.mark.skipif(os.getuid() == 0 and not BOUNDED_WHOLE, reason="root without a cgroup: no process limit "
                    "can be had (doctor says so)")
def test_processes_are_bounded_even_for_root(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=60, limits=Limits(processes=32))
    try:
        bomb = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
                "            time.sleep(20)\n            os._exit(0)\n        n += 1\n"
                "except OSError:\n    pass\nprint(n)")
        assert int(run(tool, bomb)) < 32
    finally:
        tool.close()


@needs_sandbox
def test_no_nested_user_namespaces(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=30)
    try:
        text = run(tool, "import subprocess\nprint(subprocess.run(['unshare', '--user', 'true']).returncode)")
        assert text.strip() not in ("0", ""), text
    finally:
        tool.close()


@needs_sandbox
def test_the_data_folder_has_a_quota_for_all_its_files(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=60, limits=Limits(data_bytes=20 * 2**20, data_files=50))
    try:
        assert run(tool, "kept = 1") == ""
        [stopped] = tool.run("python", "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 2**20)\n"
                                       "import time\ntime.sleep(30)")
        assert stopped.metadata == "system_error" and "grew past its 20 MiB" in stopped.content
        assert "NameError" in run(tool, "kept")  # the kernel was ended at once: its state is gone, and said to be
        assert run(tool, "import os\nfor name in os.listdir():\n    os.remove(name)\nprint('emptied')") == "emptied\n"
        [stopped] = tool.run("python", "import os\nfor i in range(200):\n    os.mkdir(f'd{i}')\n"
                                       "import time\ntime.sleep(30)")
        assert "grew past 50 files" in stopped.content
    finally:
        tool.close()


@needs_sandbox
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak memory from /proc")
def test_huge_outputs_never_reach_this_process(tmp_path: Path) -> None:
    """Three 200 MiB "pictures", a 100 MB print, a flood of outputs: the chat's own memory stays small."""
    script = ("import sys; from pathlib import Path\n"
              "from glm4_local.tools.python_tool import PythonTool; from glm4_local.tools.sandbox import find_sandbox\n"
              "tool = PythonTool(Path(sys.argv[1]), find_sandbox(), timeout=60)\n"
              "code = sys.stdin.read().split('#---\\n')\n"
              "seen = [tool.run('python', c)[0] for c in code]\n"
              "tool.close()\n"
              # this process's own peak (ru_maxrss would count the test process it was forked from, as Linux
              # records the pre-exec peak)
              "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n"
              "for o in seen: print(repr((o.content[:200], o.shown[-200:], str(o.image))))")
    pictures = ("from IPython.display import display\nimport base64\n"
                "for i in range(3):\n"
                "    display({'image/png': base64.b64encode(b'x' * (200 * 2**20)).decode()}, raw=True)\n")
    flood = ("from IPython.display import display\n"
             "for i in range(5000):\n    display({'text/plain': 'x' * 100}, raw=True)")
    cells = [pictures, "print('y' * 100_000_000)", flood, "print('still here')"]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], input="#---\n".join(cells),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_mib, *seen = done.stdout.splitlines()
    assert int(peak_mib) < 400, f"{peak_mib} MiB"
    results = [eval(line) for line in seen]
    assert "was not received" in results[0][1] or "died" in results[0][0]
    assert "was not received" in results[1][0]
    assert "earlier outputs not kept" in results[2][1]
    assert results[3][0] == "still here\n"
    assert not list((tmp_path / "data").glob("*.png"))


def test_a_cell_keeps_bounded_outputs() -> None:
    cell = CellResult()
    for _ in range(3):
        cell.add("stream", {"name": "stdout", "text": "a" * MAX_KEPT_CHARS})
    for i in range(MAX_OUTPUTS + 20):
        cell.add("display_data", {"data": {"text/plain": str(i), "image/png": "iVBORw0KGgo="}})
    cell.add("display_data", {"data": {"image/png": "x" * 20_000_000}})
    cell.add("error", "not a dict")
    assert len(cell.outputs) == MAX_OUTPUTS and cell.dropped == 22 and cell.images == MAX_IMAGES
    assert sum(o.png is not None for o in cell.outputs) <= MAX_IMAGES
    assert cell.outputs[-1].image_note.startswith("a picture larger than")


def test_files_in_the_data_folder_are_never_imported_at_start(tmp_path: Path) -> None:
    """A module the code left in /mnt/data, named like one the kernel imports while it starts, never runs
    (unconfined, it would run on the host without any confirmation); the model's own modules still import."""
    data, marker = tmp_path / "data", tmp_path / "ran.txt"
    data.mkdir()
    for name in ("ipykernel_launcher", "ipykernel", "IPython", "zmq", "traitlets", "jupyter_client", "json", "os",
                 "matplotlib_inline", "comm", "debugpy"):
        (data / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    (data / "helper.py").write_text("VALUE = 42\n")
    tool = PythonTool(data, None, timeout=30, confirm=lambda code: True)
    try:
        assert run(tool, "import helper, json\nprint(helper.VALUE, json.dumps([1]))") == "42 [1]\n"
    finally:
        tool.close()
    assert not marker.exists(), marker.read_text()


def test_a_running_cell_stops_when_asked_from_another_thread(tmp_path: Path) -> None:
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=60, confirm=None if SANDBOX else (lambda code: True))
    try:
        assert run(tool, "kept = 'yes'") == ""
        answers: list[str] = []
        endless = "import time\nwhile True:\n    time.sleep(0.01)"
        worker = threading.Thread(target=lambda: answers.append(run(tool, endless)))
        worker.start()
        while tool.kernel.running is None:
            time.sleep(0.01)
        started = time.monotonic()
        tool.interrupt()
        worker.join(30)
        assert answers == ["Interrupted"] and time.monotonic() - started < 5
        assert run(tool, "print(kept)") == "yes\n"  # interrupted, not restarted
    finally:
        tool.close()


def test_doctor_runs_a_sandboxed_print_and_says_which_bounds_hold() -> None:
    from glm4_local.frontends.doctor import collect, render

    lines = render(collect())
    [sandbox] = [line for line in lines if line.startswith("Sandbox")]
    if SANDBOX is None:
        assert "none" in sandbox
        return
    assert "a sandboxed print(1) printed 1" in sandbox
    limits = [line for line in lines if line.strip().startswith("limits")]
    assert any(("cgroup" in line) == BOUNDED_WHOLE and "memory" in line for line in limits), limits
    assert any("/mnt/data" in line for line in limits)


def test_the_cgroup_kinds_are_read_from_the_machine(tmp_path: Path) -> None:
    """A delegated cgroup v2 is preferred; v1 as root next; else none (rlimits)."""
    v2 = tmp_path / "v2"
    (v2 / "user.slice" / "app").mkdir(parents=True)
    (v2 / "user.slice" / "app" / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (v2 / "user.slice" / "app" / "cgroup.procs").write_text("")
    files = {"/proc/self/mountinfo": f"30 1 0:26 / {v2} rw - cgroup2 cgroup2 rw\n",
             "/proc/self/cgroup": "0::/user.slice/app\n"}
    found = find_cgroups.__wrapped__(files.__getitem__, lambda: None)
    assert found is not None and found.kind == "cgroup v2" and found.parents == (v2 / "user.slice" / "app",)
    files["/proc/self/mountinfo"] = f"30 1 0:26 / {v2} rw - cgroup2 cgroup2 rw\n"
    (v2 / "user.slice" / "app" / "cgroup.subtree_control").write_text("cpu\n")  # not delegated to us
    assert find_cgroups.__wrapped__(files.__getitem__, lambda: None) is None
    assert json.dumps(found.scope(1, 1)) == "[]"  # no systemd-run words for a cgroup of our own


HOSTILE_BATCH = {
    "tcp to this machine": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)",
    "udp out": "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))",
    "a name lookup": "import socket\nsocket.getaddrinfo('example.com', 80)",
    "a host file": "open({secret!r}).read()",
    "the host's processes": "import os\nos.kill({host_pid}, 0)",
    "writing the system": "open('/usr/planted', 'w')",
    "writing /etc": "open('/etc/planted', 'w')",
    "mounting": "import subprocess\nsubprocess.run(['mount', '-t', 'tmpfs', 'x', '/mnt'], check=True)",
    "a user namespace": "import subprocess\nsubprocess.run(['unshare', '--user', '--map-root-user', 'true'], "
                        "check=True)",
}


@needs_sandbox
def test_a_batch_of_hostile_code_is_refused_in_the_real_sandbox(tmp_path: Path) -> None:
    """What held must keep holding: each of these fails inside, where the same code would work outside."""
    import socket

    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=30)
    try:
        for what, code in HOSTILE_BATCH.items():
            filled = code.format(port=listener.getsockname()[1], secret=str(secret), host_pid=os.getpid())
            text = run(tool, filled)
            assert "Error" in text or "error" in text, f"{what}: {text}"
        visible_pids = eval(run(tool, "import os\nprint([p for p in os.listdir('/proc') if p.isdigit()])"))
        assert len(visible_pids) < 10 and str(os.getpid()) not in visible_pids
    finally:
        tool.close()
        listener.close()


@needs_sandbox
@pytest.mark.skipif(__import__("glm4_local.tools.seccomp", fromlist=["program"]).program() is None,
                    reason="no seccomp filter for this architecture")
def test_system_calls_a_kernel_never_needs_are_refused(tmp_path: Path) -> None:
    """ptrace, bpf, io_uring, keyrings: EPERM inside, where outside the same calls get further."""
    import platform

    from glm4_local.tools.seccomp import DENIED, NUMBERS

    numbers = dict(zip(DENIED, NUMBERS[platform.machine()], strict=True))
    probe = ("import ctypes, errno, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "r = libc.syscall(int(sys.argv[1]), 0, 0, 0, 0)\n"
             "print(errno.errorcode.get(ctypes.get_errno()) if r < 0 else 'ok')")
    outside = subprocess.run([sys.executable, "-c", probe, str(numbers["ptrace"])], capture_output=True, text=True)
    assert outside.stdout.strip() == "ok"  # PTRACE_TRACEME, which a process may ask for itself
    tool = PythonTool(tmp_path / "data", SANDBOX, timeout=30)
    try:
        for name in ("ptrace", "bpf", "io_uring_setup", "keyctl", "userfaultfd", "perf_event_open"):
            code = f"import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', {probe!r}, " \
                   f"'{numbers[name]}'], capture_output=True, text=True).stdout.strip())"
            assert run(tool, code) == "EPERM\n", name
        assert run(tool, "import numpy\nprint(numpy.arange(4).sum())") == "6\n"  # what code needs still works
    finally:
        tool.close()

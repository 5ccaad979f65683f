"""Where the model's code runs: a sandbox around a command, asked for by the python tool.

Linux: bubblewrap (`bwrap`): new user, network, PID and IPC namespaces (no network at all), the system
read-only, only the Python installation and the data folder visible (no home folder, no other files),
`/mnt/data` writable, a private /tmp, dies with glm4-local; memory, process and file-size limits as
rlimits. macOS: `sandbox-exec` with a profile that denies the network and writes outside the data
folder. Elsewhere there is none, and code runs only where the user says it may run unconfined.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DATA_MOUNT = "/mnt/data"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# what programs need of /etc (the dynamic linker, fonts for plots, time zone, MIME types), no more
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/fonts",
             "/etc/localtime", "/etc/mime.types", "/etc/ssl/certs", "/etc/matplotlibrc")
PASSED_ENV = ("LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MPLBACKEND")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 * 1024**3  # address space of the kernel (numpy and plots fit well inside)
    processes: int = 256  # new processes the sandbox may start, beyond what this user already runs
    file_bytes: int = 1024**3  # largest file it may write


def python_roots() -> list[str]:
    """The folders the Python running glm4-local lives in (interpreter, standard library, packages)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths |= {p for p in sysconfig.get_paths().values() if p}
    paths |= {p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p}
    roots = sorted(os.path.realpath(p) for p in paths if os.path.isdir(p))
    return [p for i, p in enumerate(roots) if not any(p.startswith(r + os.sep) for r in roots[:i])]


def _uid_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        try:
            count += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            continue
    return count


def rlimits(limits: Limits) -> Callable[[], None]:
    """Set in the child before it becomes the sandbox (rlimits are inherited by everything it starts)."""
    nproc = _uid_processes() + limits.processes  # RLIMIT_NPROC counts all of this user's processes

    def apply() -> None:
        for kind, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_NPROC, nproc),
                            (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))

    return apply


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


@dataclass(frozen=True)
class Sandbox:
    kind: str  # "bubblewrap" or "sandbox-exec"
    program: str

    def wrap(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path) -> list[str]:
        """`argv` run inside: no network, the data folder at /mnt/data (its cwd), `ipc_dir` for the sockets."""
        if self.kind == "bubblewrap":
            return self._bwrap(argv, data_dir, ipc_dir)
        return self._sandbox_exec(argv, data_dir, ipc_dir)

    def _bwrap(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path) -> list[str]:
        env = {"HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONNOUSERSITE": "1", "MPLBACKEND": "Agg",
               "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
               "LANG": "C.UTF-8", "IPYTHONDIR": "/tmp/.ipython", "MPLCONFIGDIR": "/tmp/.matplotlib"}
        env |= {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        args = [self.program, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
                "--hostname", "sandbox", *_system_binds()]
        for root in python_roots():
            args += ["--ro-bind", root, root]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/mnt",
                 "--bind", str(data_dir), DATA_MOUNT, "--bind", str(ipc_dir), str(ipc_dir),
                 "--remount-ro", "/", "--chdir", DATA_MOUNT]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", *argv]

    def _sandbox_exec(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path) -> list[str]:
        # macOS has no /mnt/data to mount: the data folder is the working folder, and writes go only there
        profile = "\n".join([
            "(version 1)", "(allow default)", "(deny network*)",
            '(allow network* (remote unix-socket (subpath "{ipc}")) (local unix-socket (subpath "{ipc}")))',
            "(deny file-write*)",
            '(allow file-write* (subpath "{data}") (subpath "{ipc}") (subpath "/private/var/folders")'
            ' (literal "/dev/null"))',
            '(deny file-read* (subpath "{home}"))',
            '(allow file-read* (subpath "{data}") (subpath "{ipc}")' + "".join(
                f' (subpath "{root}")' for root in python_roots()) + ")",
        ]).format(ipc=os.path.realpath(ipc_dir), data=os.path.realpath(data_dir), home=os.path.expanduser("~"))
        return [self.program, "-p", profile, *argv]


def find_sandbox() -> Sandbox | None:
    """The sandbox this machine has, if any (bubblewrap on Linux, sandbox-exec on macOS)."""
    if sys.platform.startswith("linux") and (program := shutil.which("bwrap")):
        return Sandbox("bubblewrap", program)
    if sys.platform == "darwin" and (program := shutil.which("sandbox-exec")):
        return Sandbox("sandbox-exec", program)
    return None


def sandbox_help() -> str:
    """How to get one, for the error that refuses to run code without it."""
    if sys.platform == "darwin":
        return "sandbox-exec was not found (it ships with macOS)"
    if sys.platform.startswith("linux"):
        return "install bubblewrap (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap)"
    return f"no sandbox is known for {sys.platform}"

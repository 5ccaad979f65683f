"""Where the model's code runs: a sandbox around a command, asked for by the python tool.

Linux: bubblewrap (`bwrap`): new user, network, PID and IPC namespaces (no network at all, no nested user
namespaces), a seccomp filter (seccomp.py), the system read-only, only the Python installation and the
data folder visible (no home folder, no other files), `/mnt/data` writable, a private /tmp and /dev/shm of
a fixed size, dies with glm4-local. bwrap itself is started with an empty environment: it is PID 1
inside, and its /proc/1/environ is readable there. The memory and the processes of the whole sandbox are
bounded by a cgroup where the machine has one for us (cgroups.py), else per process by rlimits.
macOS: `sandbox-exec` with a profile that denies the network and writes outside the data folder.
Elsewhere there is none, and code runs only where the user says it may run unconfined.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from glm4_local.tools import seccomp
from glm4_local.tools.cgroups import SYSTEMD, Cgroups, Group, find_cgroups

DATA_MOUNT = "/mnt/data"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# what programs need of /etc (the dynamic linker, fonts for plots, time zone, MIME types), no more
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/fonts",
             "/etc/localtime", "/etc/mime.types", "/etc/ssl/certs", "/etc/matplotlibrc")
PASSED_ENV = ("LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MPLBACKEND")
# what systemd-run needs to reach the user's service manager (socket paths, no secrets)
SYSTEMD_ENV = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")
CHECK_TIMEOUT = 30.0
_ROOTS_SCRIPT = ("import json, os, sys, sysconfig\n"
                 "paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),\n"
                 "         os.path.dirname(os.path.realpath(sys.executable))]\n"
                 "paths += [p for p in sysconfig.get_paths().values() if p]\n"
                 "paths += [p for p in sys.path if p and 'packages' in p]\n"
                 "print(json.dumps(paths))")


def size_text(n: int) -> str:
    """A size in the largest binary unit it reaches: "4 GiB", "512 MiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 * 1024**3  # the whole sandbox (its cgroup), else each process's address space
    processes: int = 256  # processes the sandbox may have at once (its cgroup; else this user's new ones)
    file_bytes: int = 1024**3  # largest file it may write
    tmp_bytes: int = 512 * 1024**2  # its private /tmp
    shm_bytes: int = 64 * 1024**2  # its /dev/shm
    data_bytes: int = 2 * 1024**3  # all of /mnt/data (checked while code runs)
    data_files: int = 10_000  # files and folders in /mnt/data


def _normal_roots(paths: Sequence[str]) -> list[str]:
    """Existing folders, as given and as resolved, without the ones inside another."""
    found = set()
    for path in paths:
        if path and os.path.isabs(path) and os.path.isdir(path):
            found |= {os.path.normpath(path), os.path.realpath(path)}
    roots = sorted(found)
    return [p for i, p in enumerate(roots) if not any(p.startswith(r + os.sep) for r in roots[:i])]


@functools.lru_cache(maxsize=8)
def python_roots(executable: str | None = None) -> list[str]:
    """The folders a Python lives in (interpreter, standard library, packages): glm4-local's own, or
    another interpreter's, asked of it."""
    if executable is None or executable == sys.executable:
        paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
                 os.path.dirname(os.path.realpath(sys.executable)),
                 *(p for p in sysconfig.get_paths().values() if p), *(p for p in sys.path if p and "packages" in p)]
        return _normal_roots(paths)
    answer = subprocess.run([executable, "-I", "-c", _ROOTS_SCRIPT], capture_output=True, text=True, timeout=30,
                            check=True)
    return _normal_roots(json.loads(answer.stdout))


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


@functools.lru_cache(maxsize=4)
def _can_disable_userns(program: str) -> bool:
    """Whether this bwrap can keep the sandbox from making user namespaces of its own (bwrap >= 0.8, and a
    user namespace it may make: not a setuid bwrap on a kernel that refuses them to users)."""
    true = shutil.which("true") or "/bin/true"
    try:
        done = subprocess.run([program, "--unshare-all", "--unshare-user", "--disable-userns", "--ro-bind", "/", "/",
                               "--", true], env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@dataclass
class Launch:
    """How one sandboxed program starts: its command, the environment of the command (never ours), what
    the child runs between fork and exec, the cgroup that bounds it (None: rlimits only), and the file
    descriptors the child reads (the seccomp filter), ours to close once it has started."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None] | None
    group: Group | None = None
    pass_fds: tuple[int, ...] = ()

    def started(self) -> None:
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = ()

    def close(self) -> None:
        self.started()
        if self.group is not None:
            self.group.close()


def _kernel_env(python: str, home: str) -> dict[str, str]:
    env = {"HOME": home, "TMPDIR": home, "PYTHONNOUSERSITE": "1", "MPLBACKEND": "Agg",
           "PATH": f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "IPYTHONDIR": f"{home}/.ipython", "MPLCONFIGDIR": f"{home}/.matplotlib"}
    return env | {k: os.environ[k] for k in PASSED_ENV if k in os.environ}


@dataclass(frozen=True)
class Sandbox:
    kind: str  # "bubblewrap" or "sandbox-exec"
    program: str

    @property
    def cgroups(self) -> Cgroups | None:
        return find_cgroups() if self.kind == "bubblewrap" else None

    def launch(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path, limits: Limits,
               python: str | None = None) -> Launch:
        """`argv` run inside: no network, the data folder at /mnt/data (its cwd), `ipc_dir` for the sockets;
        `python` is the interpreter it runs (glm4-local's own unless given)."""
        python = python or sys.executable
        if self.kind != "bubblewrap":
            return Launch(self._sandbox_exec(argv, data_dir, ipc_dir, python), _kernel_env(python, str(ipc_dir)),
                          rlimits(limits))
        cgroups = self.cgroups
        try:
            group = cgroups.make(limits.memory_bytes, limits.processes) if cgroups else None
        except OSError:  # the hierarchy changed under us (a full cgroup, a permission taken back): rlimits hold
            group = None
        set_limits = rlimits(limits)

        def preexec() -> None:
            if group is not None:
                group.join()
            set_limits()

        prefix = cgroups.scope(limits.memory_bytes, limits.processes) if cgroups else []
        env = {k: os.environ[k] for k in SYSTEMD_ENV if k in os.environ} if prefix else {}
        if prefix:  # what systemd-run needed to reach the manager is not bwrap's to hold either
            prefix += [shutil.which("env") or "/usr/bin/env", "-i"]
        filter_fd = seccomp.filter_fd()
        fds = () if filter_fd is None else (filter_fd,)
        argv = [*prefix, *self._bwrap(argv, data_dir, ipc_dir, limits, python, filter_fd)]
        return Launch(argv, env, preexec, group, fds)

    def _bwrap(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path, limits: Limits, python: str,
               filter_fd: int | None) -> list[str]:
        args = [self.program, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
                "--hostname", "sandbox"]
        if filter_fd is not None:
            args += ["--seccomp", str(filter_fd)]
        if _can_disable_userns(self.program):
            args += ["--unshare-user", "--disable-userns"]
        args += _system_binds()
        args += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm",
                 "--remount-ro", "/dev", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
        # after /tmp: a Python that lives under /tmp (a venv there) is mounted over the private /tmp
        for root in python_roots(python):
            args += ["--ro-bind", os.path.realpath(root), root]
        args += ["--dir", "/mnt", "--bind", str(data_dir), DATA_MOUNT, "--bind", str(ipc_dir), str(ipc_dir),
                 "--remount-ro", "/", "--chdir", DATA_MOUNT]
        for key, value in _kernel_env(python, "/tmp").items():
            args += ["--setenv", key, value]
        return [*args, "--", *argv]

    def _sandbox_exec(self, argv: Sequence[str], data_dir: Path, ipc_dir: Path, python: str) -> list[str]:
        # macOS has no /mnt/data to mount: the data folder is the working folder, and writes go only there
        profile = "\n".join([
            "(version 1)", "(allow default)", "(deny network*)",
            '(allow network* (remote unix-socket (subpath "{ipc}")) (local unix-socket (subpath "{ipc}")))',
            "(deny file-write*)",
            '(allow file-write* (subpath "{data}") (subpath "{ipc}") (subpath "/private/var/folders")'
            ' (literal "/dev/null"))',
            '(deny file-read* (subpath "{home}"))',
            '(allow file-read* (subpath "{data}") (subpath "{ipc}")' + "".join(
                f' (subpath "{root}")' for root in python_roots(python)) + ")",
        ]).format(ipc=os.path.realpath(ipc_dir), data=os.path.realpath(data_dir), home=os.path.expanduser("~"))
        return [self.program, "-p", profile, *argv]

    def bounds(self, limits: Limits) -> list[str]:
        """Which limits hold on this machine, and how (for `doctor` and the chat's banner)."""
        cgroups = self.cgroups
        memory = size_text(limits.memory_bytes)
        if cgroups is not None:
            how = f"{cgroups.kind}" + (" (systemd-run)" if cgroups.kind == SYSTEMD else "")
            lines = [f"memory {memory} and {limits.processes} processes for the whole sandbox ({how})"]
        else:
            processes = ("no process limit (running as root without a cgroup: RLIMIT_NPROC does not bind root)"
                         if os.getuid() == 0 else f"{limits.processes} new processes (RLIMIT_NPROC)")
            lines = [f"memory {memory} per process (RLIMIT_AS; no cgroup for the whole sandbox here)", processes]
        if self.kind == "bubblewrap":
            lines.append(f"private /tmp {size_text(limits.tmp_bytes)}, /dev/shm {size_text(limits.shm_bytes)}")
            lines.append(f"seccomp: {len(seccomp.DENIED)} system calls refused (ptrace, bpf, io_uring, keyrings, "
                         "mounts, ...)" if seccomp.program() else "no seccomp filter for this architecture")
        lines.append(f"/mnt/data {size_text(limits.data_bytes)} and {limits.data_files:,} files in all, "
                     f"{size_text(limits.file_bytes)} a file")
        return lines


@dataclass(frozen=True)
class SandboxCheck:
    """What a sandboxed `print(1)` gave: `ok` when it printed 1 and exited 0."""

    ok: bool
    output: str


def check_sandbox(sandbox: Sandbox, python: str | None = None, limits: Limits | None = None) -> SandboxCheck:
    """Run `print(1)` with `python` (glm4-local's own by default) in the sandbox, as the kernel is run."""
    python = python or sys.executable
    with tempfile.TemporaryDirectory(prefix="glm4k-check-") as folder:
        data, ipc = Path(folder, "data"), Path(folder, "ipc")
        data.mkdir()
        ipc.mkdir()
        launch = sandbox.launch([python, "-I", "-c", "print(1)"], data, ipc, limits or Limits(), python)
        try:
            done = subprocess.run(launch.argv, env=launch.env, preexec_fn=launch.preexec, cwd=data,
                                  pass_fds=launch.pass_fds, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=CHECK_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as e:
            return SandboxCheck(False, str(e))
        finally:
            launch.close()
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    return SandboxCheck(done.returncode == 0 and done.stdout.strip() == b"1", output[-300:])


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

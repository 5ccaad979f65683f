"""A seccomp filter for the sandbox: system calls a Python kernel never makes, and that widen how much of
the host's kernel code can reach (tracing and reading other processes' memory, BPF, perf events,
io_uring, userfaultfd, keyrings, modules, mounts, namespaces, the kernel log), fail with EPERM. A call
made in another architecture's numbering (32-bit x86 or x32 on x86_64) fails too, so the list cannot be
stepped around. Classic BPF, as bubblewrap's `--seccomp FD` takes it; for x86_64 and aarch64 (elsewhere
there is none, and `doctor` says so).
"""

from __future__ import annotations

import errno
import os
import platform
import struct

DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "bpf", "keyctl", "add_key",
          "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
          "kexec_file_load", "init_module", "finit_module", "delete_module", "mount", "umount2", "pivot_root",
          "swapon", "swapoff", "reboot", "setns", "unshare", "open_by_handle_at", "name_to_handle_at", "acct",
          "quotactl", "fanotify_init", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
          "syslog", "mount_setattr")
# the numbers of DENIED, from the kernel's unistd headers (asm/unistd_64.h; asm-generic/unistd.h for aarch64)
NUMBERS = {
    "x86_64": (101, 310, 311, 298, 321, 250, 248, 249, 323, 425, 426, 427, 246, 320, 175, 313, 176, 165, 166, 155,
               167, 168, 169, 308, 272, 304, 303, 163, 179, 300, 428, 429, 430, 431, 432, 433, 103, 442),
    "aarch64": (117, 270, 271, 241, 280, 219, 217, 218, 282, 425, 426, 427, 104, 294, 105, 273, 106, 40, 39, 41,
                224, 225, 142, 268, 97, 265, 264, 89, 60, 262, 428, 429, 430, 431, 432, 433, 116, 442),
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_BIT = 0x40000000  # x86_64's x32 ABI numbers its calls from here
LOAD_WORD, JUMP_EQUAL, JUMP_AT_LEAST, RETURN = 0x20, 0x15, 0x35, 0x06
ALLOW, DENY = 0x7FFF0000, 0x00050000 | errno.EPERM


def _instruction(code: int, k: int, if_true: int = 0, if_false: int = 0) -> bytes:
    return struct.pack("=HBBI", code, if_true, if_false, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture (None where there is none)."""
    machine = machine or platform.machine()
    if machine not in NUMBERS:
        return None
    numbers = NUMBERS[machine]
    assert len(numbers) == len(DENIED)
    code = [_instruction(LOAD_WORD, 4), _instruction(JUMP_EQUAL, AUDIT_ARCH[machine], 1, 0), _instruction(RETURN, DENY),
            _instruction(LOAD_WORD, 0)]
    if machine == "x86_64":
        code.append(_instruction(JUMP_AT_LEAST, X32_BIT, len(numbers) + 1, 0))
    code += [_instruction(JUMP_EQUAL, number, len(numbers) - i, 0) for i, number in enumerate(numbers)]
    return b"".join([*code, _instruction(RETURN, ALLOW), _instruction(RETURN, DENY)])


def filter_fd() -> int | None:
    """A file descriptor to read the filter from (for `bwrap --seccomp`), or None where there is none; the
    caller passes it to the child and closes it."""
    filter_program = program()
    if filter_program is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, filter_program)
    finally:
        os.close(write_end)
    return read_end

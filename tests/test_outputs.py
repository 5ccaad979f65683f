"""What glm4-local writes: only ever in place of a regular file, whole or not at all, never over a file
that appeared meanwhile, no stale temporaries, the user's umask, a full disk named, a broken stdout one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import factory
from helpers.cli import SLOW_CONVERT, cli, one_line_error

from glm4_local.chat.session import save_json
from glm4_local.core.errors import Glm4LocalError

pytestmark = pytest.mark.processes  # the CLI as a child, so an abort in llama.cpp fails a test, not pytest


# -- outputs only ever replace regular files -------------------------------------------------------

def special_files(folder: Path) -> dict[str, Path]:
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    sock = folder / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    server.close()
    (folder / "dir").mkdir()
    return {"a named pipe": fifo, "a socket": sock, "a folder": folder / "dir"}


def test_convert_and_repair_never_replace_a_special_file(make_checkpoint: Callable[..., Path],
                                                           make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    community = factory.write_community_gguf(make_gguf("q8_0"), tmp_path / "c.gguf")
    for kind, target in special_files(tmp_path).items():
        before = os.lstat(target)
        one_line_error(cli("convert", str(make_checkpoint()), "-t", "f16", "-o", str(target), "--force", "-q"),
                       str(target), kind)
        one_line_error(cli("repair", str(community), "-o", str(target), "--force", "-q"), kind)
        after = os.lstat(target)
        assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino


def test_save_never_replaces_a_special_file(tmp_path: Path) -> None:
    for kind, target in special_files(tmp_path).items():
        with pytest.raises(Glm4LocalError, match=kind):
            save_json(target, [{"role": "user", "content": "hi"}])
        assert not stat.S_ISREG(os.lstat(target).st_mode)


# -- two conversions to one output -----------------------------------------------------------------

def test_a_file_that_appears_meanwhile_is_kept(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, "convert", str(make_checkpoint()), "-t", "f32",
                             "-o", str(out), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".o.gguf.") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    out.write_bytes(b"the other conversion's file")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "appeared while this was being written; it was kept" in stderr
    assert out.read_bytes() == b"the other conversion's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


# -- temporary files of killed conversions ---------------------------------------------------------

def test_stale_temporary_files_are_removed_saying_so(make_checkpoint: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".o.gguf.glm4-local-{dead_pid}-abc123.tmp",
             tmp_path / f"..o.gguf.glm4-local-{dead_pid}-abc123.tmp.glm4-local-{dead_pid}-def456.16bit"]
    live_owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".x.gguf.glm4-local-{live_owner.pid}-ghi789.tmp"
        for path in (*stale, live):
            path.write_bytes(b"partial")
        result = cli("convert", str(make_checkpoint()), "-t", "f16", "-o", str(tmp_path / "o.gguf"))
        assert result.returncode == 0, result.stderr
        for path in stale:
            assert not path.exists() and f"removed {path}" in result.stderr
        assert live.exists()
    finally:
        live_owner.kill()


# -- permissions, disk full while quantizing, a corrupt autosave ----------------------------------

def test_outputs_follow_the_umask(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        result = cli("convert", str(make_checkpoint()), "-t", "f16", "-o", str(tmp_path / "o.gguf"), "-q")
        save_json(tmp_path / "c.json", [])
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "o.gguf").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o640


def test_disk_full_while_quantizing_names_the_output(make_checkpoint: Callable[..., Path], make_gguf,
                                                        tmp_path: Path) -> None:
    staged = make_gguf("f16").stat().st_size  # the 16-bit file the quantizer reads
    mount = tmp_path / "full"
    mount.mkdir()
    size = staged + 48 * 1024  # room for the 16-bit file, not for the quantized one beside it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        result = cli("convert", str(make_checkpoint()), "-t", "q8_0", "-o", str(mount / "o.gguf"), "-q")
        assert result.returncode == 0  # q8_0 is written directly: fits
        (mount / "o.gguf").unlink()
        result = cli("convert", str(make_checkpoint()), "-t", "q4_0", "-o", str(mount / "o.gguf"), "-q")
        one_line_error(result, f"{mount / 'o.gguf'}: disk full")
        assert ".tmp" not in result.stderr and list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_corrupt_latest_autosave_resumes_the_one_before(scripted_gguf: Callable[[str], Path],
                                                             tmp_path: Path) -> None:
    sessions = Path(os.environ["GLM4_LOCAL_HOME"]) / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "older.json").write_text(json.dumps([{"role": "user", "content": "earlier"}]))
    os.utime(sessions / "older.json", (1, 1))
    (sessions / "newer.json").write_text("{ broken")
    result = cli("chat", str(scripted_gguf("answer")), "--resume", "-p", "hi")
    assert result.returncode == 0 and result.stdout == "Sunny day\n", result.stderr
    assert "skipped" in result.stderr and "newer.json" in result.stderr


def _stdout_limited_to_16_bytes() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda folder: (folder / "tokenizer.model").write_bytes(b""), "the vocabulary is empty"),
    (lambda folder: (folder / "generation_config.json").write_text('{"temperature": NaN}'), "temperature is nan"),
    (lambda folder: (folder / "generation_config.json").write_text('{"top_p": -1}'), "top_p is -1"),
], ids=["empty tokenizer", "NaN temperature", "negative top_p"])
def test_convert_never_publishes_a_file_glm4_local_would_refuse(make_checkpoint: Callable[..., Path],
                                                                 tmp_path: Path, damage: Callable[[Path], object],
                                                                 problem: str) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(make_checkpoint(), folder)
    damage(folder)
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(cli("convert", str(folder), "-t", "f32", "-o", str(out / "o.gguf")), problem)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", [["doctor"], ["info", "MODEL"], ["render", "CONVERSATION"]])
def test_a_failing_stdout_is_one_line_not_a_traceback(scripted_gguf: Callable[[str], Path], tmp_path: Path,
                                                      command: list[str]) -> None:
    """stdout on a full disk (here a file past its size limit): one line on stderr and exit 1."""
    conversation = tmp_path / "c.json"
    conversation.write_text(json.dumps({"messages": [{"role": "user", "content": "hello " * 50}]}))
    args = [str(scripted_gguf("answer")) if a == "MODEL" else str(conversation) if a == "CONVERSATION" else a
            for a in command]
    with (tmp_path / "out.txt").open("w") as out:
        done = subprocess.run([sys.executable, "-m", "glm4_local", *args], stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=120, preexec_fn=_stdout_limited_to_16_bytes)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "glm4-local: error: cannot write the output (File too large)"

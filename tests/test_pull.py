"""`pull`, `list`, `rm` and the first run, against a Hub on 127.0.0.1 that speaks the Hub's file API
(tests/helpers/hubserver.py): community GGUFs made as llama.cpp's converter makes them, a tiny checkpoint, and
the faults of real downloads. Each failure is one line, and nothing half-written shows in the store."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest
from helpers import children, factory
from helpers.hubserver import LocalHub

from glm4_local.convert.outtypes import OUT_TYPES
from glm4_local.convert.pipeline import convert
from glm4_local.core.errors import Interrupted, StoreError
from glm4_local.core.paths import store_dir
from glm4_local.core.progress import Progress
from glm4_local.gguf_tools.summary import summarize
from glm4_local.store.hub import Hub
from glm4_local.store.pull import pull
from glm4_local.store.records import installed, partial_downloads, read_origin

REPO = "second-state/glm-4-9b-chat-GGUF"  # the catalog's default repository
Q4 = "glm-4-9b-chat-Q4_K_M.gguf"
Q8 = "glm-4-9b-chat-Q8_0.gguf"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def community(scripted_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A GLM-4 GGUF as the Hub has them (llama.cpp's converter: wrong pre-tokenizer, no stop token for
    observations, no template), of a model whose reply is fixed ("Sunny day")."""
    path = tmp_path_factory.mktemp("hubfile") / "community.gguf"
    return factory.write_community_gguf(scripted_gguf("answer"), path).read_bytes()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, community: bytes) -> Iterator[LocalHub]:
    server = LocalHub()
    server.add(REPO, {Q4: community, Q8: community + b"", "README.md": b"# GLM-4-9B-Chat GGUF\n"})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # read when the library was first imported
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # written in pieces smaller than a file
    with server.running():
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def stored() -> list[str]:
    """Every entry of the store, hidden ones included."""
    folder = store_dir()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else []


def test_pull_repairs_checks_and_publishes_under_a_stable_name(hub: LocalHub) -> None:
    result = pull(None)
    assert result.fresh and result.path == store_dir() / Q4
    assert any("pre-tokenizer 'chatglm-bpe'" in c for c in result.origin.repaired)
    assert any("eom_token_id = <|observation|>" in c for c in result.origin.repaired)
    assert summarize(result.path).warnings == []  # what `info` checks: it now tokenizes and stops as GLM-4
    assert stored() == [".partial", Q4, Q4.replace(".gguf", ".origin.json")]
    origin = read_origin(result.path)
    assert origin is not None and origin.repo == REPO and origin.file == Q4
    assert origin.sha256 == __import__("hashlib").sha256(hub.repos[REPO].files[Q4]).hexdigest()
    fetched = len(hub.gets(Q4))
    again = pull("glm-4-9b-chat")  # the same tag: the Hub is asked, the file is not fetched again
    assert not again.fresh and len(hub.gets(Q4)) == fetched
    record = result.path.with_name(result.path.stem + ".origin.json")
    record.write_text('{"repo": 1, "repaired": "all"}')  # a record that is not one of ours: ignored, not trusted
    [row] = installed()
    assert (row.origin, row.repaired) == ("unknown (no record)", "-")


def test_a_file_already_in_the_hugging_face_cache_is_not_downloaded_again(hub: LocalHub) -> None:
    from huggingface_hub import hf_hub_download

    from glm4_local.convert.source import hub_cache_dir

    cached = Path(hf_hub_download(REPO, Q4, cache_dir=hub_cache_dir(), endpoint=hub.url))  # as `hf download` does
    fetched = len(hub.gets(Q4))
    result = pull(None)
    assert len(hub.gets(Q4)) == fetched and summarize(result.path).warnings == []
    assert cached.read_bytes() == hub.repos[REPO].files[Q4]  # the cache is only read
    blob = cached.resolve()
    blob.write_bytes(b"damaged" + blob.read_bytes()[7:])
    notes: list[str] = []
    again = pull(None, force=True, notify=notes.append)
    assert len(hub.gets(Q4)) == fetched + 1 and "in the Hugging Face cache, but damaged" in notes[0]
    assert again.path.read_bytes() == result.path.read_bytes()


def test_a_file_already_right_is_published_as_it_is(hub: LocalHub, scripted_gguf: Callable[[str], Path]) -> None:
    from huggingface_hub import hf_hub_download

    from glm4_local.convert.source import hub_cache_dir

    ours = scripted_gguf("answer").read_bytes()  # as glm4-local converts: nothing to repair
    hub.add("me/ours-GGUF", {"ours-F32.gguf": ours, "other-F32.gguf": ours + b""})
    downloaded = pull("me/ours-GGUF/ours-F32.gguf")
    assert downloaded.origin.repaired == [] and downloaded.path.read_bytes() == ours
    hf_hub_download("me/ours-GGUF", "other-F32.gguf", cache_dir=hub_cache_dir(), endpoint=hub.url)
    from_cache = pull("me/ours-GGUF/other-F32.gguf")
    assert from_cache.origin.repaired == [] and from_cache.path.read_bytes() == ours
    assert stored() == [".partial", "other-F32.gguf", "other-F32.origin.json", "ours-F32.gguf",
                        "ours-F32.origin.json"]


def test_names_choose_the_file(hub: LocalHub) -> None:
    assert pull("glm-4-9b-chat:q8_0").path.name == Q8
    assert pull(f"{REPO}:Q4_K_M").path.name == Q4
    assert pull(f"hf.co/{REPO}/blob/main/{Q8}", force=True).path.name == Q8
    with pytest.raises(StoreError, match=rf"{REPO} has no Q6_K GGUF; its GGUF files: {Q4}, {Q8}"):
        pull(f"{REPO}:Q6_K")
    with pytest.raises(StoreError, match="not a model glm4-local knows"):
        pull("llama3")
    with pytest.raises(StoreError, match=f"has no file nope.gguf; its GGUF files: {Q4}"):
        pull(f"{REPO}/nope.gguf")


class StopIn(Progress):
    """Ctrl-C once `limit` bytes of a phase starting with `phase` are done."""

    def __init__(self, phase: str, limit: int = 1) -> None:
        self.wanted, self.limit, self.done, self.phase = phase, limit, 0, ""

    def start(self, phase: str, total_bytes: int, total_tensors: int) -> None:
        self.phase = phase

    def advance(self, nbytes: int) -> None:
        if self.phase.startswith(self.wanted):
            self.done += nbytes
            if self.done >= self.limit:
                raise KeyboardInterrupt


def test_an_interrupted_download_resumes_where_it_stopped(hub: LocalHub) -> None:
    with pytest.raises(KeyboardInterrupt):
        pull(None, progress=StopIn("Downloading", 200_000))
    [(_, kept)] = partial_downloads()
    assert kept >= 200_000 and installed() == [] and not (store_dir() / Q4).exists()
    result = pull(None)
    assert hub.gets(Q4)[-1] == f"bytes={kept}-"  # only the rest was asked for
    assert result.fresh and partial_downloads() == [] and summarize(result.path).warnings == []


def test_ctrl_c_while_the_download_is_repaired_in_place_removes_it(hub: LocalHub) -> None:
    with pytest.raises(Interrupted, match="repaired in place: it was removed, and the next pull fetches it again"):
        pull(None, progress=StopIn("Moving tensors"))
    assert partial_downloads() == [] and installed() == []
    assert pull(None).fresh


def test_a_connection_cut_mid_file_is_resumed_by_the_hub_client(hub: LocalHub) -> None:
    hub.faults.cut_after[Q4] = 100_000
    result = pull(None)
    assert hub.gets(Q4) == [None, "bytes=65536-"]  # what was written before the cut is kept
    assert summarize(result.path).warnings == []


def test_bytes_that_do_not_match_the_hub_checksum_are_refused_and_removed(hub: LocalHub, community: bytes) -> None:
    damaged = bytearray(community)
    damaged[len(damaged) // 2] ^= 0xFF
    hub.faults.served[Q4] = bytes(damaged)
    with pytest.raises(StoreError, match=r"does not match the Hub's checksum \(\w{12}… instead of \w{12}…\); it was "
                                         "removed"):
        pull(None)
    assert stored() == [".partial"]


def test_a_full_disk_is_said_before_downloading(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(StoreError, match=r"needs [\d.]+ MB free in .* \([\d.]+ MB to download, 67\.1 MB for the "
                                         r"repair\); it has 1\.0 kB"):
        pull(None)
    assert hub.gets(Q4) == []


def test_no_room_for_a_repaired_copy_keeps_the_download(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file only a copy can repair (its layout unlike llama.cpp's writer's) needs room for the copy: said,
    and the verified download kept for the next pull."""
    import shutil

    import glm4_local.store.pull as pulling

    monkeypatch.setattr(pulling, "repair_in_place", lambda path, progress=None: None)
    real = shutil.disk_usage
    size = len(hub.repos[REPO].files[Q4])
    free = [size + pulling.HEADER_ROOM, size // 2]  # room for the download; then most of it is used up

    def little_room(path: object) -> object:
        return shutil._ntuple_diskusage(10**12, 0, free.pop(0) if len(free) > 1 else free[0])

    monkeypatch.setattr(shutil, "disk_usage", little_room)
    with pytest.raises(StoreError, match=r"for the repaired copy\); it has"):
        pull(None)
    assert [kept for _, kept in partial_downloads()] == [size]
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert pull(None).fresh and len(hub.gets(Q4)) == 1  # the whole file was kept: not fetched again


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_failures_are_one_line(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match=r"nobody/nothing: no such model repository on http://127\.0\.0\.1"):
        pull("nobody/nothing")
    with pytest.raises(StoreError, match=r"a/b\.\.c: not a repository name the Hub takes"):
        pull("a/b..c")
    with pytest.raises(StoreError, match="no such revision"):
        pull(None, revision="v9")
    with pytest.raises(StoreError, match=r"cannot reach http://127\.0\.0\.1:\d+ .*check the network"):
        pull(None, hub=Hub(f"http://127.0.0.1:{closed_port()}"))
    hub.faults.not_a_hub = True
    with pytest.raises(StoreError, match=r"http://127\.0\.0\.1:\d+ does not answer as the Hugging Face Hub does"):
        pull(None)
    hub.faults.not_a_hub = False
    hub.faults.listed_sha256[Q4] = "../../../escaped"  # a listing names the part file: it must be a checksum
    with pytest.raises(StoreError, match=f"described '{Q4}' with a checksum or size that is not one"):
        pull(None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StoreError, match="offline mode is on"):
        pull(None)
    assert stored() == []


def test_a_checkpoint_repository_is_converted_into_the_store(hub: LocalHub, make_checkpoint: Callable[..., Path],
                                                             tmp_path: Path) -> None:
    folder = make_checkpoint(shards=2, dtype="bf16")  # as the 9B model is: a sharded index, bf16
    hub.add("THUDM/glm-4-tiny", {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    result = pull("THUDM/glm-4-tiny:q8_0")
    assert result.path == store_dir() / "glm-4-tiny-Q8_0.gguf" and result.origin.file is None
    direct = convert(str(folder), OUT_TYPES["q8_0"], output=tmp_path / "direct.gguf")
    assert result.path.read_bytes() == direct.path.read_bytes()  # the same file as converting it here


@pytest.mark.heavy
def test_a_community_gguf_with_glm4s_own_vocabulary_is_pulled_exact(hub: LocalHub, real_vocab_gguf: Path,
                                                                    tmp_path: Path) -> None:
    """The 151,552-token vocabulary of the real model, as llama.cpp's converter writes it: repaired on the
    way in, and the tokenizer check over every vocabulary string passes before it is published."""
    theirs = factory.write_community_gguf(real_vocab_gguf, tmp_path / "real.gguf")
    hub.add("someone/glm-4-9b-chat-GGUF", {"glm-4-9b-chat.F16.gguf": theirs.read_bytes()})
    result = pull("someone/glm-4-9b-chat-GGUF:F16")
    assert result.path == store_dir() / "glm-4-9b-chat.F16.gguf"
    assert any(c.startswith("merges rebuilt from the token list") for c in result.origin.repaired)
    assert summarize(result.path).warnings == []


def cli(*args: str, cwd: Path, env: dict[str, str], limit_bytes: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    def limited() -> None:
        children.default_signals()
        if limit_bytes is not None:  # a disk that fills: writes past the limit fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "glm4_local", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, preexec_fn=limited)


def user_env(hub: LocalHub, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GLM4_LOCAL"))}
    return env | {"HF_ENDPOINT": hub.url, "GLM4_LOCAL_HOME": str(home), "HF_HUB_CACHE": str(home / "hf"),
                  "HOME": str(home), "COLUMNS": "120", "PYTHONPATH": str(ROOT)}


@pytest.mark.processes
def test_pull_then_chat_from_another_folder_then_list_and_rm(hub: LocalHub, tmp_path: Path) -> None:
    env = user_env(hub, tmp_path / "home")
    first, other = tmp_path / "a", tmp_path / "b"
    first.mkdir(), other.mkdir()
    pulled = cli("pull", cwd=first, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == str(tmp_path / "home" / "models" / Q4)
    assert "repaired: pre-tokenizer 'chatglm-bpe' -> 'glm4'" in pulled.stderr
    assert "tokenizer check: all " in pulled.stderr and "ready: glm-4-9b-chat-Q4_K_M" in pulled.stderr
    answered = cli("chat", "-p", "hi", cwd=other, env=env | {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"})
    assert (answered.returncode, answered.stdout) == (0, "Sunny day\n"), answered.stderr
    listed = cli("list", cwd=other, env=env)
    [header, row] = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "QUANT", "CONTEXT", "REPAIRED", "FROM"]
    assert row.split()[:4] == ["glm-4-9b-chat-Q4_K_M", *f"{len(hub.repos[REPO].files[Q4]) / 1e6:.1f} MB".split(),
                               "ALL_F32"]
    assert "yes (7 changes)" in row and f"{REPO}/{Q4} @ " in row
    (other / "models").mkdir()
    (other / "models" / "mine.gguf").write_bytes(hub.repos[REPO].files[Q8])
    refused = cli("rm", "mine", cwd=other, env=env)
    assert refused.returncode == 1 and "is not in the store" in refused.stderr and (other / "models/mine.gguf").exists()
    removed = cli("rm", "glm-4-9b-chat-Q4_K_M", cwd=other, env=env)
    assert removed.returncode == 0 and "removed glm-4-9b-chat-Q4_K_M" in removed.stdout
    assert sorted(p.name for p in (tmp_path / "home" / "models").iterdir()) == [".partial"]


@pytest.mark.processes
def test_a_disk_that_fills_mid_download_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    env = user_env(hub, tmp_path / "home")
    result = cli("pull", cwd=tmp_path, env=env, limit_bytes=300_000)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    fetching, error = result.stderr.splitlines()
    assert fetching.startswith(f"fetching {REPO}/{Q4} (")
    assert "the disk is full" in error and "the partial download was removed" in error
    assert [p.name for p in (tmp_path / "home" / "models").rglob("*")] == [".partial"]


@pytest.mark.processes
def test_no_network_is_one_line(hub: LocalHub, tmp_path: Path) -> None:
    env = user_env(hub, tmp_path / "home") | {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    result = cli("pull", cwd=tmp_path, env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "cannot reach http://127.0.0.1" in result.stderr and "check the network" in result.stderr


@pytest.mark.processes
def test_what_the_hub_says_reaches_the_terminal_as_text(hub: LocalHub, tmp_path: Path) -> None:
    hub.add("evil/repo", {"a\x1b]52;c;cm0gLXJmIH4=\x07.gguf": b"GGUF"})  # a file name that writes the clipboard
    result = cli("pull", "evil/repo:Q9_9", cwd=tmp_path, env=user_env(hub, tmp_path / "home"))
    assert result.returncode == 1 and "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "its GGUF files: a\\x1b]52;c;cm0gLXJmIH4=\\x07.gguf" in result.stderr


@pytest.mark.processes
def test_ctrl_c_during_a_pull_keeps_the_part_for_the_next_one(hub: LocalHub, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    hub.faults.hold_after[Q4] = 4096
    env = user_env(hub, tmp_path / "home")
    child = children.started(subprocess.Popen([sys.executable, "-m", "glm4_local", "pull"], cwd=tmp_path, env=env,
                                              stderr=subprocess.PIPE, text=True,
                                              preexec_fn=children.default_signals))
    assert hub.faults.holding.wait(60)
    monkeypatch.setenv("GLM4_LOCAL_HOME", str(tmp_path / "home"))  # the same store, while that pull writes
    with pytest.raises(StoreError, match=f"{Q4}: another glm4-local pull is downloading it now"):
        pull(None)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    hub.faults.release.set()
    assert child.returncode == 130 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "glm4-local: error: interrupted; what was downloaded is kept, and the same " \
                                      "pull resumes it"
    assert not (tmp_path / "home" / "models" / Q4).exists()
    listed = cli("list", cwd=tmp_path, env=env).stdout
    assert listed.startswith("no models yet") and "(an interrupted download: " in listed
    removed = cli("rm", "--partial", cwd=tmp_path, env=env)
    assert removed.returncode == 0 and removed.stdout.startswith("removed: an unfinished download")
    assert cli("rm", cwd=tmp_path, env=env).returncode == 1  # nothing named: says what to give
    again = cli("pull", cwd=tmp_path, env=env)
    assert again.returncode == 0 and (tmp_path / "home" / "models" / Q4).is_file()
    assert again.stderr.startswith(f"fetching {REPO}/{Q4} (")


@pytest.mark.processes
def test_first_run_in_a_terminal_offers_the_default_model(hub: LocalHub, tmp_path: Path) -> None:
    env = user_env(hub, tmp_path / "home") | {"TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = children.started(pexpect.spawn(sys.executable, ["-m", "glm4_local", "chat"], env=env,
                                           cwd=str(tmp_path), encoding="utf-8", timeout=120, dimensions=(40, 120),
                                           preexec_fn=children.default_signals))
    child.expect_exact(f"No model yet. Pull glm-4-9b-chat (Q4_K_M, about 6.25 GB, from {REPO}")
    child.expect_exact("[y/N]")
    child.send("y\r")
    child.expect_exact(f"Downloading {Q4}")  # the progress bar: size, speed, time left
    child.expect(r"MB/s|kB/s|MB|GB")
    child.expect_exact("ready: glm-4-9b-chat-Q4_K_M")
    child.expect_exact("›")
    child.send("hello\r")
    child.expect_exact("Sunny day")
    child.expect_exact("›")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert (tmp_path / "home" / "models" / Q4).is_file()


@pytest.mark.processes
def test_first_run_elsewhere_is_one_line_naming_the_command(tmp_path: Path) -> None:
    for command in (["chat", "-p", "hi"], ["serve", "--port", "0"]):
        result = subprocess.run([sys.executable, "-m", "glm4_local", *command], capture_output=True, text=True,
                                cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=60)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "no model found" in result.stderr and "get one with: glm4-local pull" in result.stderr

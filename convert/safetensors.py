"""Read safetensors checkpoints (single file or sharded) without loading them into memory.

Headers are parsed and checked up front, so a truncated or corrupt file is reported before any
output is written; tensor data is then served as read-only memory-mapped numpy views.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glm4_local.core.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# Source dtypes GLM-4 checkpoints use; bf16 is served as raw uint16 and widened by the caller.
_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, byte range, dtype name and shape."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate one safetensors file's header; raise CheckpointError naming the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path}: corrupt safetensors header (length {header_len} for a {size}-byte file)"
                )
            header_bytes = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _parse_entry(path, name, info, data_start, size)
    return entries


def _parse_entry(path: Path, name: str, info: object, data_start: int, file_size: int) -> TensorEntry:
    try:
        dtype = str(info["dtype"])  # type: ignore[index]
        shape = tuple(int(d) for d in info["shape"])  # type: ignore[index]
        begin, end = (int(o) for o in info["data_offsets"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}") from e
    if dtype not in _DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has unsupported dtype {dtype} (supported: {', '.join(_DTYPES)})"
        )
    expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
    if end - begin != expected or begin < 0:
        raise CheckpointError(f"{path}: tensor {name!r} byte range does not match shape {list(shape)} {dtype}")
    if data_start + end > file_size:
        raise CheckpointError(
            f"{path}: truncated safetensors file (tensor {name!r} ends at byte {data_start + end}, "
            f"file has {file_size})"
        )
    return TensorEntry(name, path, dtype, shape, data_start + begin, data_start + end)


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, via the shard index when there is one."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({str(v) for v in weight_map.values()})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{folder / missing[0]}: shard listed in {INDEX_NAME} is missing")
        return [folder / f for f in files]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    if pickles:
        raise CheckpointError(
            f"{folder}: found only pickle weights ({', '.join(pickles[:3])}); only safetensors are supported "
            "(pickle files can run code when loaded)"
        )
    raise CheckpointError(f"{folder}: no *.safetensors weight files found")


class SafetensorsCheckpoint:
    """All tensors of a checkpoint, by name, across its shards."""

    def __init__(self, files: list[Path]) -> None:
        self.entries: dict[str, TensorEntry] = {}
        for path in files:
            for name, entry in read_header(path).items():
                if name in self.entries:
                    raise CheckpointError(f"{path}: tensor {name!r} also appears in {self.entries[name].path}")
                self.entries[name] = entry
        self._maps: dict[Path, np.memmap] = {}

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def dtypes(self) -> set[str]:
        return {e.dtype for e in self.entries.values()}

    def raw(self, name: str) -> np.ndarray:
        """A read-only view of the tensor as stored (bf16 as uint16)."""
        entry = self.entries[name]
        mm = self._maps.get(entry.path)
        if mm is None:
            mm = self._maps[entry.path] = np.memmap(entry.path, dtype=np.uint8, mode="r")
        return mm[entry.start : entry.end].view(_DTYPES[entry.dtype]).reshape(entry.shape)

    def to_f32(self, name: str, data: np.ndarray) -> np.ndarray:
        """`data` (a slice of tensor `name` as stored) widened to float32."""
        if self.entries[name].dtype == "BF16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32)

    def f32(self, name: str) -> np.ndarray:
        """The whole tensor as float32 (for the reference forward pass, one layer at a time)."""
        return self.to_f32(name, self.raw(name))

    def close(self) -> None:
        self._maps.clear()


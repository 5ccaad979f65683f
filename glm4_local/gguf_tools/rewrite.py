"""Write a copy of a GGUF with other metadata: tensor data copied byte for byte, streamed.

Memory stays constant whatever the file's size (the data is copied in fixed-size chunks); the
caller makes the output atomic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.gguf.writing import pad_to_alignment, write_header
from glm4_local.core.progress import Progress

K = gguf.Keys
V_U32 = gguf.GGUFValueType.UINT32
CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Field:
    """One metadata value with its GGUF type (and its items' type, for arrays)."""

    value: Any
    type: gguf.GGUFValueType
    item_type: gguf.GGUFValueType | None = None


def fields_of(header: GGUFHeader) -> dict[str, Field]:
    """A header's metadata as Fields, in file order."""
    return {key: Field(header.get(key), *header.field_types[key]) for key in header.fields}


def _header_writer(dest: Path, header: GGUFHeader, fields: Mapping[str, Field]) -> gguf.GGUFWriter:
    """A writer of `fields` and `header`'s tensor table to `dest` (the header only: data is the caller's)."""
    writer = gguf.GGUFWriter(dest, str(fields[K.General.ARCHITECTURE].value))  # writes the architecture itself
    for key, f in fields.items():
        if key == K.General.ARCHITECTURE:
            continue
        if key == K.General.ALIGNMENT:
            writer.add_custom_alignment(int(f.value))
        else:
            writer.add_key_value(key, f.value, f.type, f.item_type)
    for t in header.tensors:
        # numpy order (slowest dimension first); GGUF stores dimensions the other way round
        writer.add_tensor_info(t.name, tuple(reversed(t.shape)), np.dtype(np.float32), t.n_bytes, raw_dtype=t.type)
    return writer


def rewrite_gguf(source: Path, header: GGUFHeader, dest: Path, fields: Mapping[str, Field],
                 progress: Progress | None = None) -> None:
    """Write `dest`: metadata `fields` (in their order), then `source`'s tensors exactly as stored."""
    writer = _header_writer(dest, header, fields)
    write_header(writer)
    with source.open("rb") as src, dest.open("ab") as out:
        for t in header.tensors:
            pad_to_alignment(out, writer.data_alignment)
            _copy_range(src, out, t.offset, t.n_bytes, progress)
        pad_to_alignment(out, writer.data_alignment)


def _copy_range(src: BinaryIO, out: BinaryIO, start: int, length: int, progress: Progress | None) -> None:
    src.seek(start)
    left = length
    while left:
        chunk = src.read(min(CHUNK_BYTES, left))
        if not chunk:
            raise OSError(f"source ended {left} bytes early")
        out.write(chunk)
        left -= len(chunk)
        if progress:
            progress.advance(len(chunk))


def _laid_out(header: GGUFHeader, alignment: int) -> list[int] | None:
    """Each tensor's offset in the data section as rewrite_gguf writes them (in table order, each padded
    to `alignment`); None when `header`'s own layout differs, so moving its data would not give that file."""
    offsets, position = [], 0
    for t in header.tensors:
        if t.offset - header.data_start != position:
            return None
        offsets.append(position)
        position = gguf.GGUFWriter.ggml_pad(position + t.n_bytes, alignment)
    return offsets


def rewrite_in_place(path: Path, header: GGUFHeader, fields: Mapping[str, Field], scratch: Path,
                     progress: Progress | None = None) -> bool:
    """Make the file at `path` what rewrite_gguf would write from it, without a second copy of its
    tensors: the data is moved within the file to follow the new header (`scratch`: a small temporary
    file for it). False, with nothing changed, when its layout is not rewrite_gguf's. Not atomic: an
    interruption leaves a damaged file (the caller checks it, and can fetch it again)."""
    try:
        write_header(_header_writer(scratch, header, fields))
        new_header = scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)
    alignment = header.alignment
    offsets = _laid_out(header, alignment)
    if offsets is None or int(fields.get(K.General.ALIGNMENT, Field(alignment, V_U32)).value) != alignment:
        return False
    new_start = gguf.GGUFWriter.ggml_pad(len(new_header), alignment)
    delta = new_start - header.data_start
    order = range(len(header.tensors) - 1, -1, -1) if delta > 0 else range(len(header.tensors))
    with path.open("r+b") as file:
        for i in order:
            t = header.tensors[i]
            _move(file, t.offset, t.offset + delta, t.n_bytes, backwards=delta > 0, progress=progress)
        file.seek(0)
        file.write(new_header + bytes(new_start - len(new_header)))
        end = new_start
        for t, offset in zip(header.tensors, offsets, strict=True):  # padding: zeros, as rewrite_gguf writes
            file.seek(end)
            file.write(bytes(new_start + offset - end))
            end = new_start + offset + t.n_bytes
        file.seek(end)
        final = gguf.GGUFWriter.ggml_pad(end, alignment)
        file.write(bytes(final - end))
        file.truncate(final)
    return True


def _move(file: BinaryIO, start: int, to: int, length: int, backwards: bool, progress: Progress | None) -> None:
    """`length` bytes from `start` to `to` within one file, in chunks, in the order that never overwrites
    bytes not yet moved."""
    if start == to:
        return
    chunks = [(offset, min(CHUNK_BYTES, length - offset)) for offset in range(0, length, CHUNK_BYTES)]
    for offset, size in reversed(chunks) if backwards else chunks:
        file.seek(start + offset)
        data = file.read(size)
        if len(data) != size:
            raise OSError(f"the file ended {size - len(data)} bytes early")
        file.seek(to + offset)
        file.write(data)
        if progress:
            progress.advance(size)

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
CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Field:
    """One metadata value with its GGUF type (and its items' type, for arrays)."""

    value: Any
    type: gguf.GGUFValueType
    item_type: gguf.GGUFValueType | None = None


def fields_of(header: GGUFHeader) -> dict[str, Field]:
    """A header's metadata as Fields, in file order."""
    return {key: Field(value, *header.field_types[key]) for key, value in header.fields.items()}


def rewrite_gguf(source: Path, header: GGUFHeader, dest: Path, fields: Mapping[str, Field],
                 progress: Progress | None = None) -> None:
    """Write `dest`: metadata `fields` (in their order), then `source`'s tensors exactly as stored."""
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

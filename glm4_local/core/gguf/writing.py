"""Writing a GGUF in pieces: gguf's writer for the metadata and tensor table, then the data appended
block by block (so no tensor need be held whole in memory)."""

from __future__ import annotations

from typing import BinaryIO

import gguf


def write_header(writer: gguf.GGUFWriter) -> None:
    """Metadata and tensor table, then close: tensor data is appended by the caller, block by block."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    finally:
        writer.close()


def pad_to_alignment(out: BinaryIO, alignment: int) -> None:
    """Zeros up to the next multiple of `alignment`, where GGUF tensor data starts and ends."""
    position = out.tell()
    out.write(bytes(gguf.GGUFWriter.ggml_pad(position, alignment) - position))

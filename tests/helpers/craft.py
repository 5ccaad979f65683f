"""Hand-made GGUF files for hostile-input tests: any metadata type or value, at the byte level.

`craft(source, dest, changes)` copies a real GGUF with some fields replaced, removed or added (even
with types or values no writer would produce); `deep_array` builds pathologically nested arrays.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf

from glm4_local.core.gguf.header import read_gguf_header

V = gguf.GGUFValueType
_FORMATS = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
            V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}
DELETE = object()


class Raw:
    """Bytes to put in the file as a value, verbatim (after the type)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def pack(vtype: V, value: Any, item_type: V | None = None) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if vtype == V.STRING:
        data = value.encode("utf-8", errors="surrogatepass")
        return struct.pack("<Q", len(data)) + data
    if vtype == V.ARRAY:
        assert item_type is not None
        return struct.pack("<IQ", item_type, len(value)) + b"".join(pack(item_type, v) for v in value)
    return struct.pack(_FORMATS[vtype], value)


def deep_array(depth: int) -> Raw:
    """An array of an array of ... of one uint8, `depth` levels."""
    data = struct.pack("<IQ", V.UINT8, 1) + b"\x01"
    for _ in range(depth - 1):
        data = struct.pack("<IQ", V.ARRAY, 1) + data
    return Raw(data)


def craft(source: Path, dest: Path, changes: dict[str, Any], alignment: int | None = None) -> Path:
    """`source` with metadata `changes`: key -> (type, value[, item type]) to set, or DELETE.

    Tensor infos and data are copied as they are (data re-padded to `alignment` if given)."""
    header = read_gguf_header(source)
    kv: list[bytes] = []
    fields = {k: (header.field_types[k][0], v, header.field_types[k][1]) for k, v in header.fields.items()}
    for key, change in changes.items():
        if change is DELETE:
            fields.pop(key, None)
        else:
            fields[key] = change if len(change) == 3 else (*change, None)
    for key, (vtype, value, item_type) in fields.items():
        kv.append(pack(V.STRING, key) + struct.pack("<I", vtype) + pack(vtype, value, item_type))
    data = source.read_bytes()
    infos = b""
    for t in header.tensors:
        infos += pack(V.STRING, t.name) + struct.pack("<I", len(t.shape)) + b"".join(struct.pack("<Q", d)
                                                                                   for d in t.shape)
        infos += struct.pack("<IQ", t.type, t.offset - header.data_start)
    body = b"GGUF" + struct.pack("<IQQ", 3, len(header.tensors), len(kv)) + b"".join(kv) + infos
    align = alignment or header.alignment
    body += b"\0" * (-len(body) % align)
    dest.write_bytes(body + data[header.data_start :])
    return dest

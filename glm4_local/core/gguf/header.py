"""A fast reader for a GGUF file's header (metadata and tensor table), without its tensor data.

gguf-py's GGUFReader builds a numpy view per array element: about 18 s for GLM-4's 470,000
vocabulary strings and merges. Checking a file before every chat cannot wait that long, so this
reads the same format in one pass, with bounds checks that turn a truncated or corrupt file into
ValueError. Long string arrays are walked, not decoded (StringArray): every start of chat or serve
reads the header, and decoding GLM-4's vocabulary and merges took 0.2 s of it; what reads their
texts decodes them then.
"""

from __future__ import annotations

import codecs
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import gguf
import numpy as np

V = gguf.GGUFValueType
_MAX_ARRAY_DEPTH = 8
_LENGTH = struct.Struct("<Q")  # a string's byte length
_MAX_DIMS = 4  # GGML_MAX_DIMS
LAZY_MIN = 4096  # string arrays this long are StringArrays (a vocabulary, merges); shorter ones lists
_SCALARS: dict[int, str] = {
    V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
    V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d",
}
_NUMPY: dict[int, str] = {
    V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4", V.INT32: "<i4",
    V.FLOAT32: "<f4", V.BOOL: "?", V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    type: gguf.GGMLQuantizationType
    offset: int  # from the start of the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * type_size


class StringArray(Sequence[str]):
    """A GGUF array of strings, kept as its bytes: an item is decoded (UTF-8, errors replaced, as a list
    of them would hold) when asked for, the whole list once, when first iterated."""

    def __init__(self, region: bytes, starts: np.ndarray, lengths: np.ndarray) -> None:
        self._region, self._starts, self._lengths = region, starts, lengths
        self._texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice) or self._texts is not None:
            return self.texts()[index]
        start = int(self._starts[index])
        return codecs.utf_8_decode(self._region[start : start + int(self._lengths[index])], "replace", True)[0]

    def __iter__(self) -> Any:
        return iter(self.texts())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray) and self._region == other._region and len(self) == len(other):
            return True  # the same bytes (each item's length is in them)
        return isinstance(other, (StringArray, list)) and self.texts() == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-list semantics: unhashable, as a list

    def texts(self) -> list[str]:
        if self._texts is None:
            region, decode = self._region, codecs.utf_8_decode
            self._texts = [decode(region[a : a + n], "replace", True)[0]
                           for a, n in zip(self._starts.tolist(), self._lengths.tolist(), strict=True)]
        return self._texts

    def each_has_inside(self, byte: bytes) -> bool:
        """Every item has `byte` (one ASCII character) after its first and before its last character
        (bytes, not texts: an ASCII byte is never part of another character, so the two agree)."""
        found = np.flatnonzero(np.frombuffer(self._region, dtype=np.uint8) == ord(byte))
        after_first = np.searchsorted(found, self._starts + 1)
        next_found = np.append(found, len(self._region) + 1)[after_first]
        return bool(np.all(next_found < self._starts + self._lengths - 1))


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]
    tensors: list[TensorInfo]
    # each field's GGUF type, and for arrays their items' type: what a faithful copy needs
    field_types: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]]
    alignment: int
    data_start: int  # where tensor data begins

    def get(self, key: str, default: Any = None) -> Any:
        """The field's value; an array of strings as a list."""
        value = self.fields.get(key, default)
        return value.texts() if isinstance(value, StringArray) else value

    def strings(self, key: str) -> Sequence[str] | None:
        """An array of strings without decoding them all (a StringArray or a list); None if the field is
        missing or holds anything else."""
        value = self.fields.get(key)
        if isinstance(value, StringArray):
            return value
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"header runs past the end of the file (at byte {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def peek(self, fmt: str) -> Any:
        value = self.scalar(fmt)
        self.pos -= struct.calcsize(fmt)
        return value

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str] | StringArray:
        """`count` strings in a row; from LAZY_MIN on, walked in one tight loop (GLM-4's 470,000 vocabulary
        strings and merges) and kept undecoded."""
        if count < LAZY_MIN:
            return [self.string() for _ in range(count)]
        data, first = self.data, self.pos
        length = _LENGTH.unpack_from
        heads = [0] * count  # where each item's length is; bounds are checked once, at the end
        pos = first
        try:
            for i in range(count):
                heads[i] = pos
                pos += 8 + length(data, pos)[0]
        except struct.error:
            raise ValueError(f"header runs past the end of the file (at byte {pos})") from None
        if pos > len(data):
            raise ValueError(f"header runs past the end of the file (at byte {heads[-1]})")
        self.pos = pos
        starts = np.array(heads, dtype=np.int64) - (first - 8)
        lengths = np.diff(starts, append=pos - first + 8) - 8
        return StringArray(bytes(data[first:pos]), starts, lengths)

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == V.STRING:
            return self.string()
        if vtype == V.ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise ValueError(f"arrays nested more than {_MAX_ARRAY_DEPTH} deep")
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _NUMPY:
                dtype = np.dtype(_NUMPY[item_type])
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            if count > len(self.data):
                raise ValueError(f"array of {count} items cannot fit in the file")
            if item_type == V.STRING:
                return self.strings(count)
            return [self.value(item_type, depth + 1) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"unknown value type {vtype}")
        return self.scalar(_SCALARS[vtype])


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse the header; ValueError for anything malformed or truncated, OSError for I/O."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return _parse(_Cursor(view), len(mapped))
        finally:
            view.release()


def _parse(cur: _Cursor, file_size: int) -> GGUFHeader:
    if bytes(cur.take(4)) != b"GGUF":
        raise ValueError("not a GGUF file")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    fields = {}
    field_types = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.scalar("<I")
        item_type = cur.peek("<I") if vtype == V.ARRAY else None
        fields[key] = cur.value(vtype)
        field_types[key] = (_value_type(vtype), None if item_type is None else _value_type(item_type))
    raw = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise ValueError(f"tensor {name} has {n_dims} dimensions (1 to {_MAX_DIMS})")
        dims = tuple(cur.scalar("<Q") for _ in range(n_dims))
        raw.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    alignment = _alignment(fields.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [_tensor(name, dims, type_id, offset, alignment, data_start) for name, dims, type_id, offset in raw]
    if len({t.name for t in tensors}) != len(tensors):
        raise ValueError("a tensor name appears twice")
    return GGUFHeader(version, fields, tensors, field_types, alignment, data_start)


def _alignment(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise ValueError(f"alignment {value!r} is not a positive power of two")
    return value


def _tensor(name: str, dims: tuple[int, ...], type_id: int, offset: int, alignment: int, data_start: int
            ) -> TensorInfo:
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
    except ValueError:
        raise ValueError(f"tensor {name} has unknown type {type_id}") from None
    if qtype not in gguf.GGML_QUANT_SIZES:
        raise ValueError(f"tensor {name} has type {qtype.name}, which has no size")
    elements = 1
    for d in dims:
        elements *= d
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if elements == 0 or elements >= 2**62 or dims[0] % block:
        raise ValueError(f"tensor {name} has an impossible shape {list(dims)} for {qtype.name}")
    if offset % alignment:
        raise ValueError(f"tensor {name} data is not aligned to {alignment} bytes")
    return TensorInfo(name, dims, qtype, data_start + offset)


def _value_type(code: int) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(code)
    except ValueError:
        raise ValueError(f"unknown value type {code}") from None

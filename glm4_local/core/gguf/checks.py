"""Everything llama.cpp's loader asserts on, checked in Python first: a bad file is one clear error, never
an abort inside llama.cpp (which kills the process, often without a message).

The tokenizer arrays, the special-token ids, every hyper-parameter (through the family's
`spec_from_gguf`) and every tensor's name and shape against the family's table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf

from glm4_local.core.errors import GGUFFileError
from glm4_local.core.families.family import ModelFamily, ModelSpec
from glm4_local.core.families.registry import require_family
from glm4_local.core.gguf.header import GGUFHeader, StringArray, read_gguf_header

K = gguf.Keys
SPECIAL_ID_KEYS = (K.Tokenizer.BOS_ID, K.Tokenizer.EOS_ID, K.Tokenizer.EOT_ID, K.Tokenizer.EOM_ID,
                   K.Tokenizer.UNK_ID, K.Tokenizer.SEP_ID, K.Tokenizer.PAD_ID, K.Tokenizer.MASK_ID)
_TOKEN_TYPES = {int(t) for t in gguf.TokenType}
_TEXT_KEYS = (K.General.NAME, K.Tokenizer.CHAT_TEMPLATE, K.Tokenizer.PRE)
_NUMBER_KEYS = (K.General.SAMPLING_TEMP, K.General.SAMPLING_TOP_P, K.General.SAMPLING_TOP_K)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string_array(header: GGUFHeader, key: str) -> bool:
    """The field is an array of strings, as its GGUF type says (the reader gave each item as text)."""
    return header.field_types.get(key) == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)


def _pairs(merges: Sequence[str]) -> bool:
    """Every merge is 'left right': a space after its first character and before its last."""
    if isinstance(merges, StringArray):
        return merges.each_has_inside(b" ")
    return all(" " in m[1:-1] for m in merges)


def check_tokenizer_arrays(header: GGUFHeader, family: ModelFamily, where: str) -> None:
    model = header.get(K.Tokenizer.MODEL)
    if model != family.tokenizer_model:
        raise GGUFFileError(f"{where}: tokenizer model {model!r} is not {family.name}'s "
                            f"({family.tokenizer_model!r})")
    tokens, types = header.strings(K.Tokenizer.LIST), header.get(K.Tokenizer.TOKEN_TYPE)
    if not tokens or not _string_array(header, K.Tokenizer.LIST):
        raise GGUFFileError(f"{where}: {K.Tokenizer.LIST} is not a list of token texts")
    if not isinstance(types, list) or len(types) != len(tokens) or not set(types) <= _TOKEN_TYPES:
        raise GGUFFileError(f"{where}: {K.Tokenizer.TOKEN_TYPE} does not give a valid type for each of the "
                            f"{len(tokens):,} tokens")
    scores = header.get(K.Tokenizer.SCORES)
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(tokens)):
        raise GGUFFileError(f"{where}: {K.Tokenizer.SCORES} does not give a score for each token")
    merges = header.strings(K.Tokenizer.MERGES)
    if K.Tokenizer.MERGES in header.fields and not (merges is not None and _string_array(header, K.Tokenizer.MERGES)
                                                    and _pairs(merges)):
        raise GGUFFileError(f"{where}: {K.Tokenizer.MERGES} is not a list of 'left right' pairs")
    for key in SPECIAL_ID_KEYS:
        value = header.get(key)
        if value is not None and not (_is_int(value) and 0 <= value < len(tokens)):
            raise GGUFFileError(f"{where}: {key} is {value!r}, not a token id below {len(tokens):,}")


def check_metadata_types(header: GGUFHeader, where: str) -> None:
    for key in _TEXT_KEYS:
        if key in header.fields and not isinstance(header.get(key), str):
            raise GGUFFileError(f"{where}: {key} is not text")
    for key in _NUMBER_KEYS:
        value = header.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
            raise GGUFFileError(f"{where}: {key} is {value!r}, not a number")
    file_type = header.get(K.General.FILE_TYPE)
    if file_type is not None and not _is_int(file_type):
        raise GGUFFileError(f"{where}: {K.General.FILE_TYPE} is {file_type!r}, not a number")


def expected_tensors(family: ModelFamily, spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> its dimensions in GGUF order (fastest-varying first), from the family's table."""
    expected = {}
    for target, bid in family.tensors.targets(spec):
        parts = target.parts[spec.layout]
        rows = sum(p.shape(spec)[0] for p in parts)
        numpy_shape = (rows, *parts[0].shape(spec)[1:])
        expected[target.gguf_name(bid)] = tuple(reversed(numpy_shape))
    return expected


def check_tensors(header: GGUFHeader, family: ModelFamily, spec: ModelSpec, where: str) -> None:
    expected = expected_tensors(family, spec)
    present = {t.name: t.shape for t in header.tensors}
    missing = [n for n in expected if n not in present]
    if missing:
        raise GGUFFileError(f"{where}: tensor {missing[0]} is missing ({len(missing)} missing in all; the header "
                            f"says {spec.n_layer} layers)")
    unexpected = [n for n in present if n not in expected]
    if unexpected:
        raise GGUFFileError(f"{where}: unexpected tensor {unexpected[0]} for a {spec.n_layer}-layer "
                            f"{family.name} model")
    for name, dims in expected.items():
        if present[name] != dims:
            raise GGUFFileError(f"{where}: tensor {name} has shape {list(present[name])}, the header's "
                                f"hyper-parameters need {list(dims)}")


def check_header(header: GGUFHeader, family: ModelFamily, where: str) -> ModelSpec:
    """The model's spec if llama.cpp can load this file; GGUFFileError naming the first problem."""
    check_metadata_types(header, where)
    check_tokenizer_arrays(header, family, where)
    spec = family.spec_from_gguf(header, where)
    check_tensors(header, family, spec, where)
    return spec


def open_gguf(path: Path) -> GGUFHeader:
    """A parsed GGUF header; GGUFFileError (naming the file) for anything unreadable or truncated."""
    if not path.is_file():
        raise GGUFFileError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFFileError(f"{path}: cannot read ({e.strerror})") from e
    if magic != b"GGUF":
        raise GGUFFileError(f"{path}: not a GGUF file")
    try:
        reader = read_gguf_header(path)
    except ValueError as e:
        raise GGUFFileError(f"{path}: corrupt or truncated GGUF ({e})") from e
    except OSError as e:
        raise GGUFFileError(f"{path}: cannot read ({e.strerror or e})") from e
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.offset + tensor.n_bytes > size:
            raise GGUFFileError(f"{path}: truncated GGUF (tensor {tensor.name} ends past the end of the file)")
    return reader


def check_model(path: Path) -> tuple[GGUFHeader, ModelFamily]:
    """The header of a GGUF of a family glm4-local runs, and that family, once everything llama.cpp
    would assert on has been checked; GGUFFileError otherwise."""
    header = open_gguf(path)
    family = require_family(header.get(K.General.ARCHITECTURE), str(path))
    check_header(header, family, str(path))
    return header, family

"""Read and check a GGUF file's header before llama.cpp is handed it; summarise it for `info`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf

from glm4_local.core import llama
from glm4_local.core.bpe import missing_splits
from glm4_local.core.errors import GGUFFileError
from glm4_local.core.families import family_for_arch, require_family, unknown_arch
from glm4_local.core.gguf_checks import check_header
from glm4_local.core.gguf_header import GGUFHeader, read_gguf_header
from glm4_local.core.model_family import ModelFamily

K = gguf.Keys


@dataclass
class GGUFSummary:
    path: Path
    architecture: str
    name: str | None
    file_type: str
    size_bytes: int
    parameters: int
    context_length: int | None
    vocab_size: int
    special_tokens: dict[str, int]
    chat_template: bool
    pre_tokenizer: str | None
    merges: int
    end_of_generation: dict[str, int] = field(default_factory=dict)  # what llama.cpp stops on
    warnings: list[str] = field(default_factory=list)


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


REPAIR = "run glm4-local repair on it"


def pre_tokenizer_problem(reader: GGUFHeader, family: ModelFamily) -> str | None:
    pre = reader.get(K.Tokenizer.PRE)
    if pre == family.pre_tokenizer:
        return None
    return (f"pre-tokenizer {pre!r} mis-tokenizes {family.name} (llama.cpp splits many vocabulary words that "
            "its tokenizer keeps whole)")


def quick_problems(reader: GGUFHeader, family: ModelFamily) -> list[str]:
    """What a glance at the header shows wrong (cheap enough to run before every chat)."""
    problems = [p for p in [pre_tokenizer_problem(reader, family)] if p]
    if reader.get(K.Tokenizer.EOM_ID) is None:
        problems.append(f"no end-of-message token, so other llama.cpp runtimes do not stop on {family.eom_token}")
    return problems


def tokenizer_warnings(reader: GGUFHeader, family: ModelFamily, specials: dict[str, int]) -> list[str]:
    """Settings known to make llama.cpp tokenize differently from the family's own tokenizer."""
    warnings = [p for p in [pre_tokenizer_problem(reader, family)] if p]
    if reader.get(K.Tokenizer.ADD_BOS):
        warnings.append(f"adds a BOS token, which {family.name} never saw in training")
    tokens = reader.get(K.Tokenizer.LIST) or []
    types = reader.get(K.Tokenizer.TOKEN_TYPE) or []
    merges = reader.get(K.Tokenizer.MERGES) or []
    left_out = missing_splits(tokens, types, merges) if tokens and len(types) == len(tokens) else 0
    if left_out:
        warnings.append(
            f"merges leave out {left_out:,} ways to build vocabulary tokens, so llama.cpp splits some text "
            f"differently from {family.name}"
        )
    needed = dict.fromkeys((family.eos_token, *family.markup_tokens, *family.stop_tokens))
    missing = [t for t in needed if t not in specials]
    if missing:
        warnings.append(f"special tokens missing from the vocabulary: {', '.join(missing)}")
    return [f"{w}; {REPAIR}" for w in warnings]


def end_of_generation(path: Path, reader: GGUFHeader, specials: dict[str, int]) -> dict[str, int]:
    """The special tokens llama.cpp itself ends generation on, as every runtime built on it does."""
    llm = llama.load(path, header=reader, vocab_only=True)
    eog = set(llama.end_of_generation(llm, sorted(specials.values())))
    return {text: i for text, i in specials.items() if i in eog}


def _file_type_name(value: object) -> str:
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return "unknown" if value is None else f"unknown ({value!r})"


def _list_of(value: object, kind: type) -> list:
    return value if isinstance(value, list) and all(isinstance(v, kind) for v in value) else []


def summarize(path: Path) -> GGUFSummary:
    """What `info` shows. A GLM-4 file llama.cpp could not load is described with the reason, not refused."""
    reader = open_gguf(path)
    arch = reader.get(K.General.ARCHITECTURE)
    family = family_for_arch(arch)
    problem = None
    if family is not None:
        try:
            check_header(reader, family, str(path))
        except GGUFFileError as e:
            problem = str(e).removeprefix(f"{path}: ")
    tokens = _list_of(reader.get(K.Tokenizer.LIST), str)
    types = _list_of(reader.get(K.Tokenizer.TOKEN_TYPE), int)
    control = int(gguf.TokenType.CONTROL)
    specials = {tokens[i]: i for i, t in enumerate(types) if t == control} if len(types) == len(tokens) else {}
    context = reader.get(K.LLM.CONTEXT_LENGTH.format(arch=arch))
    name, template, pre = (reader.get(k) for k in (K.General.NAME, K.Tokenizer.CHAT_TEMPLATE, K.Tokenizer.PRE))
    summary = GGUFSummary(
        path=path,
        architecture=str(arch),
        name=name if isinstance(name, str) else None,
        file_type=_file_type_name(reader.get(K.General.FILE_TYPE)),
        size_bytes=path.stat().st_size,
        parameters=sum(t.n_elements for t in reader.tensors),
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None,
        vocab_size=len(tokens),
        special_tokens=specials,
        chat_template=isinstance(template, str),
        pre_tokenizer=pre if isinstance(pre, str) else None,
        merges=len(_list_of(reader.get(K.Tokenizer.MERGES), str)),
    )
    if family is None:
        summary.warnings.append(f"{unknown_arch(arch)}; glm4-local cannot chat with it")
        return summary
    if problem is not None:
        summary.warnings.append(f"llama.cpp cannot load it: {problem}")
        return summary
    summary.warnings.extend(tokenizer_warnings(reader, family, specials))
    summary.end_of_generation = end_of_generation(path, reader, specials)
    unstopped = [t for t in family.stop_tokens if t not in summary.end_of_generation]
    if unstopped:
        summary.warnings.append(f"llama.cpp does not end generation on {', '.join(unstopped)}, so other "
                                f"llama.cpp runtimes run past it; {REPAIR}")
    return summary

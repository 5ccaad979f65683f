"""`info`: what a GGUF file is, and what is wrong with it (llama.cpp asked which tokens it stops on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf

from glm4_local.core.errors import GGUFFileError
from glm4_local.core.families.registry import family_for_arch, unknown_arch
from glm4_local.core.gguf.checks import check_header, open_gguf
from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.gguf.problems import REPAIR, tokenizer_warnings
from glm4_local.core.llama import door

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
    sampling: dict[str, float | int] = field(default_factory=dict)  # the defaults it carries (general.sampling.*)
    warnings: list[str] = field(default_factory=list)


def end_of_generation(path: Path, reader: GGUFHeader, specials: dict[str, int]) -> dict[str, int]:
    """The special tokens llama.cpp itself ends generation on, as every runtime built on it does."""
    llm = door.load(path, header=reader, vocab_only=True)
    eog = set(door.end_of_generation(llm, sorted(specials.values())))
    return {text: i for text, i in specials.items() if i in eog}


def _file_type_name(value: object) -> str:
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return "unknown" if value is None else f"unknown ({value!r})"


# general.sampling.* as `info` names them: the flags chat takes
SAMPLING_KEYS = {"temperature": K.General.SAMPLING_TEMP, "top_p": K.General.SAMPLING_TOP_P,
                 "top_k": K.General.SAMPLING_TOP_K, "min_p": K.General.SAMPLING_MIN_P,
                 "repeat_penalty": K.General.SAMPLING_PENALTY_REPEAT}


def sampling_defaults(reader: GGUFHeader) -> dict[str, float | int]:
    found = {name: reader.get(key) for name, key in SAMPLING_KEYS.items()}
    return {name: round(v, 6) if isinstance(v, float) else v for name, v in found.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _list_of(value: object, kind: type) -> list:
    return value if isinstance(value, list) and all(isinstance(v, kind) for v in value) else []


def quick_facts(path: Path) -> tuple[str, int | None]:
    """(quantization, trained context) from the header alone, for listings."""
    reader = open_gguf(path)
    return _file_type_name(reader.get(K.General.FILE_TYPE)), _context_length(reader)


def _context_length(reader: GGUFHeader) -> int | None:
    context = reader.get(K.LLM.CONTEXT_LENGTH.format(arch=reader.get(K.General.ARCHITECTURE)))
    return context if isinstance(context, int) and not isinstance(context, bool) else None


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
    name, template, pre = (reader.get(k) for k in (K.General.NAME, K.Tokenizer.CHAT_TEMPLATE, K.Tokenizer.PRE))
    summary = GGUFSummary(
        path=path,
        architecture=str(arch),
        name=name if isinstance(name, str) else None,
        file_type=_file_type_name(reader.get(K.General.FILE_TYPE)),
        size_bytes=path.stat().st_size,
        parameters=sum(t.n_elements for t in reader.tensors),
        context_length=_context_length(reader),
        vocab_size=len(tokens),
        special_tokens=specials,
        chat_template=isinstance(template, str),
        pre_tokenizer=pre if isinstance(pre, str) else None,
        merges=len(_list_of(reader.get(K.Tokenizer.MERGES), str)),
        sampling=sampling_defaults(reader),
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

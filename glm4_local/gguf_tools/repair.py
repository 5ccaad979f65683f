"""`repair`: make a GLM-4 GGUF from another tool tokenize and stop exactly as the model does.

Everything that needs fixing in the GLM-4-9B GGUFs people download lives in the metadata and can be
rebuilt from the file itself: the pre-tokenizer, every-split merges from its own token list, the
end-of-generation ids, no BOS, sampling defaults and chat template where missing. Tensor data is
copied byte for byte (any quantization).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from glm4_local.chat.template import TemplateRenderError, check_template
from glm4_local.core.atomic import atomic_output, check_writable_target, remove_stale_temps, temp_path_beside
from glm4_local.core.errors import GGUFFileError, Glm4LocalError
from glm4_local.core.families.family import ModelFamily
from glm4_local.core.gguf.bpe import bpe_merges
from glm4_local.core.gguf.checks import check_model
from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.jsonfile import read_text
from glm4_local.core.progress import Progress
from glm4_local.gguf_tools.rewrite import Field, fields_of, rewrite_gguf, rewrite_in_place
from glm4_local.gguf_tools.tokenizer_check import TokenizerCheck, check_tokenization, ranks_of, usable_ranks

K = gguf.Keys
V = gguf.GGUFValueType


@dataclass
class RepairReport:
    source: Path
    output: Path | None  # None: the file was already right and nothing was written
    changes: list[str] = field(default_factory=list)
    check: TokenizerCheck | None = None


class _Plan:
    """The output's metadata: the source's, with each change noted."""

    def __init__(self, header: GGUFHeader) -> None:
        self.fields = fields_of(header)
        self.changes: list[str] = []

    def value(self, key: str) -> object:
        f = self.fields.get(key)
        return None if f is None else f.value

    def set(self, key: str, new: Field, what: str) -> None:
        if self.value(key) != new.value:
            self.fields[key] = new
            self.changes.append(what)


def _special_id(header: GGUFHeader, text: str, where: Path) -> int:
    tokens = header.get(K.Tokenizer.LIST) or []
    types = header.get(K.Tokenizer.TOKEN_TYPE) or []
    ids = [i for i, (t, kind) in enumerate(zip(tokens, types, strict=False)) if t == text
           and kind == gguf.TokenType.CONTROL]
    if not ids:
        raise GGUFFileError(f"{where}: its vocabulary has no special token {text}; it is not a GLM-4 vocabulary")
    return ids[0]


def _plan_tokenizer(plan: _Plan, header: GGUFHeader, family: ModelFamily, where: Path) -> None:
    if plan.value(K.Tokenizer.MODEL) != "gpt2":
        raise GGUFFileError(f"{where}: tokenizer model {plan.value(K.Tokenizer.MODEL)!r} is not byte-level BPE "
                            "('gpt2'); it is not a GLM-4 vocabulary")
    old_pre = plan.value(K.Tokenizer.PRE)
    plan.set(K.Tokenizer.PRE, Field(family.pre_tokenizer, V.STRING),
             f"pre-tokenizer {old_pre!r} -> {family.pre_tokenizer!r}")
    merges = bpe_merges(ranks_of(header))
    old = plan.value(K.Tokenizer.MERGES) or []
    plan.set(K.Tokenizer.MERGES, Field(merges, V.ARRAY, V.STRING),
             f"merges rebuilt from the token list: {len(old):,} -> {len(merges):,} (every split of every token)")
    for key, token in ((K.Tokenizer.EOS_ID, family.eos_token), (K.Tokenizer.EOT_ID, family.eot_token),
                       (K.Tokenizer.EOM_ID, family.eom_token)):
        token_id = _special_id(header, token, where)
        plan.set(key, Field(token_id, V.UINT32), f"{key.rsplit('.', 1)[-1]} = {token} ({token_id})")
    plan.set(K.Tokenizer.ADD_BOS, Field(False, V.BOOL), "no BOS token (GLM-4 never saw one)")


def _plan_chat(plan: _Plan, header: GGUFHeader, family: ModelFamily, template: str | None, where: Path) -> None:
    if template is not None:
        plan.set(K.Tokenizer.CHAT_TEMPLATE, Field(template, V.STRING), "chat template replaced by the given one")
    elif not plan.value(K.Tokenizer.CHAT_TEMPLATE):
        context = int(header.get(K.LLM.CONTEXT_LENGTH.format(arch=family.arch_name), 0) or 0)
        published = family.template_for_context(context)
        if published is None:
            raise GGUFFileError(f"{where}: carries no chat template, and {family.name} models have "
                                "none published here: give the checkpoint's own with --template chat_template.jinja")
        name, text = published
        plan.set(K.Tokenizer.CHAT_TEMPLATE, Field(text, V.STRING), f"chat template added ({name}'s)")
    for key, default, what in ((K.General.SAMPLING_TEMP, family.default_temperature, "temperature"),
                               (K.General.SAMPLING_TOP_P, family.default_top_p, "top_p")):
        if plan.value(key) is None:
            plan.set(key, Field(default, V.FLOAT32), f"sampling default {what} = {default} added")


def plan_repair(source: Path, header: GGUFHeader, family: ModelFamily, template: str | None
                ) -> tuple[dict[str, Field], list[str]]:
    """The repaired metadata and what changed (empty when the file is already right)."""
    plan = _Plan(header)
    _plan_tokenizer(plan, header, family, source)
    _plan_chat(plan, header, family, template, source)
    return plan.fields, plan.changes


def default_output(source: Path) -> Path:
    return source.with_name(f"{source.stem}-repaired.gguf")


def repair(source: Path, output: Path | None = None, force: bool = False, template_path: Path | None = None,
           progress: Progress | None = None, notify: Callable[[str], None] = lambda message: None) -> RepairReport:
    """Write a repaired copy of `source` (atomically), or nothing when it is already right. `notify`
    hears about temporary files of killed runs that were removed."""
    sink = progress or Progress()
    header, family = check_model(source)
    template = read_text(template_path) if template_path else None
    if template is not None:
        try:
            check_template(family, template, str(template_path))
        except TemplateRenderError as e:
            raise Glm4LocalError(str(e)) from None
    usable_ranks(header, str(source))  # before anything is written: a vocabulary the check could not read
    fields, changes = plan_repair(source, header, family, template)
    if not changes:
        return RepairReport(source, None, [], _check(source, header, family, sink))
    path = output or default_output(source)
    if path.resolve() == source.resolve():
        raise Glm4LocalError(f"{path}: the output must be another file than the input")
    check_writable_target(path, force)
    for stale in remove_stale_temps(path.parent):
        notify(f"removed {stale}: a temporary file left by a run that was killed")
    with atomic_output(path, force) as tmp:
        sink.start("Copying tensors", sum(t.n_bytes for t in header.tensors), 0)
        rewrite_gguf(source, header, tmp, fields, sink)
        repaired, _ = check_model(tmp)  # checked before it is published: a failure leaves nothing behind
        check = _check(tmp, repaired, family, sink)
    return RepairReport(source, path, changes, check)


def repair_in_place(path: Path, progress: Progress | None = None) -> RepairReport | None:
    """Repair the file at `path` itself, its tensor data moved rather than copied (a download that is only
    ours: no second copy on disk); the report, `output` None when nothing needed changing. None, with
    nothing changed, when its layout allows only a copy (then `repair` it). Not atomic: an interruption
    leaves a damaged file."""
    sink = progress or Progress()
    header, family = check_model(path)
    usable_ranks(header, str(path))
    fields, changes = plan_repair(path, header, family, None)
    if not changes:
        return RepairReport(path, None, [], _check(path, header, family, sink))
    sink.start("Moving tensors", sum(t.n_bytes for t in header.tensors), 0)
    if not rewrite_in_place(path, header, fields, temp_path_beside(path, "header"), sink):
        return None
    repaired, _ = check_model(path)
    return RepairReport(path, path, changes, _check(path, repaired, family, sink))


def _check(path: Path, header: GGUFHeader, family: ModelFamily, sink: Progress) -> TokenizerCheck:
    done = 0

    def on_progress(checked: int, total: int) -> None:
        nonlocal done
        if checked == 0:
            sink.start("Checking the tokenizer", total, 0)
        sink.advance(checked - done)
        done = checked

    return check_tokenization(path, header, family, on_progress)

"""The commands that work on files: convert, info, verify, repair, eval. Each does its work through the
library and prints its report: results on `out`, notes, progress and warnings on `err`."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from glm4_local.chat.models import resolve_model
from glm4_local.convert.outtypes import OutType
from glm4_local.convert.pipeline import ImatrixChoice
from glm4_local.convert.pipeline import convert as convert_checkpoint
from glm4_local.core.errors import VerifyError
from glm4_local.core.families.registry import family_for_arch
from glm4_local.core.jsonfile import read_text
from glm4_local.frontends.progress import RichProgress
from glm4_local.gguf_tools.evaluate import evaluate as evaluate_gguf
from glm4_local.gguf_tools.repair import repair as repair_gguf
from glm4_local.gguf_tools.summary import GGUFSummary, summarize
from glm4_local.gguf_tools.verify import verify as verify_gguf


def _print_rows(out: Console, rows: dict[str, str]) -> None:
    for key, value in rows.items():
        out.print(f"{key:>15}: {value}", markup=False)


def _bar(err: Console, wanted: bool = True) -> RichProgress | None:
    return RichProgress(err) if wanted and err.is_terminal else None


def convert(source: str, kind: OutType, output: Path | None, force: bool, download: bool, imatrix: ImatrixChoice,
            quiet: bool, out: Console, err: Console) -> None:
    bar = _bar(err, not quiet)
    with bar or nullcontext():
        result = convert_checkpoint(source, kind, output=output, force=force, download=download, imatrix=imatrix,
                                    progress=bar, notify=lambda message: err.print(message, markup=False))
    if not quiet:
        gb = result.input_bytes / 1e9
        err.print(f"wrote {result.path} ({result.output_bytes / 1e9:.2f} GB, {result.out_type.label}) "
                  f"from {gb:.2f} GB in {result.seconds:.1f} s", markup=False)
    out.print(str(result.path), markup=False)


def info(name: str, as_json: bool, out: Console, err: Console) -> None:
    """`name`: a file, or a model in the folders searched (the store's, from any folder)."""
    given = Path(name).expanduser()
    summary = summarize(given if os.path.lexists(given) else resolve_model(name))
    if as_json:
        data = asdict(summary) | {"path": str(summary.path)}
        out.print(json.dumps(data, ensure_ascii=False, indent=2), markup=False)
    else:
        _print_rows(out, {
            "file": str(summary.path), "architecture": summary.architecture, "name": summary.name or "-",
            "file type": summary.file_type, "size": f"{summary.size_bytes / 1e9:.3f} GB",
            "parameters": f"{summary.parameters:,}", "context length": str(summary.context_length),
            "vocabulary": f"{summary.vocab_size:,} tokens, {summary.merges:,} merges, "
                          f"pre-tokenizer {summary.pre_tokenizer}",
            "special tokens": " ".join(f"{t}={i}" for t, i in summary.special_tokens.items()) or "-",
            "stops on": " ".join(f"{t}={i}" for t, i in summary.end_of_generation.items()) or "-",
            "chat template": "yes" if summary.chat_template else "no",
            "sampling": ", ".join(f"{k} {v}" for k, v in summary.sampling.items()) or _no_sampling(summary),
        })
    for warning in summary.warnings:
        err.print(f"warning: {warning}", markup=False)


def _no_sampling(summary: GGUFSummary) -> str:
    family = family_for_arch(summary.architecture)
    if family is None:
        return "none in the file"
    return (f"none in the file (chat uses {family.name}'s own: temperature {family.default_temperature}, "
            f"top_p {family.default_top_p})")


def verify(file: Path, source: str, out: Console, err: Console) -> None:
    """VerifyError (exit 2) when the file is outside its type's limits."""
    with err.status("running the file in llama.cpp and the reference forward pass…") if err.is_terminal \
            else nullcontext():
        report = verify_gguf(file, source)
    lim = report.limits
    out.print(f"file type {report.file_type}, {report.positions} positions", markup=False)
    out.print(f"max abs error  {report.max_abs_error:.6f} (limit {lim.max_abs_error})", markup=False)
    out.print(f"top-1 agree    {report.top1_agreement:.4f} (limit {lim.min_top1})", markup=False)
    out.print(f"mean KL        {report.mean_kl:.3e} (limit {lim.max_mean_kl})", markup=False)
    if not report.passed:
        raise VerifyError(f"{file}: disagrees with the reference beyond the {report.file_type} limits")
    out.print("OK", markup=False)


def repair(file: Path, output: Path | None, force: bool, template: Path | None, quiet: bool, out: Console,
           err: Console) -> None:
    """VerifyError (exit 2) when the result still tokenizes differently from the model's tokenizer."""
    bar = _bar(err, not quiet)
    with bar or nullcontext():
        report = repair_gguf(file, output, force, template, bar, lambda message: err.print(message, markup=False))
    for change in report.changes:
        err.print(f"changed: {change}", markup=False)
    if report.output is None:
        err.print(f"{file}: already right; nothing written", markup=False)
    if report.check is not None:
        err.print(report.check.summary(), markup=False)
        if not report.check.exact:
            raise VerifyError(f"{report.output or file}: still tokenizes differently from the model's tokenizer")
    if report.output is not None:
        out.print(str(report.output), markup=False)


def evaluate(model: str, reference: str, text: Path | None, ctx: int, threads: int | None, as_json: bool,
             out: Console, err: Console) -> None:
    model_path, reference_path = resolve_model(model), resolve_model(reference)
    sample = read_text(text) if text is not None else None
    bar = _bar(err)
    with bar or nullcontext():
        report = evaluate_gguf(model_path, reference_path, sample, ctx, threads, bar)
    if as_json:
        out.print(json.dumps(report.as_json(), indent=2), markup=False)
        return
    _print_rows(out, {
        "tokens scored": f"{report.tokens:,}", "mean KL": f"{report.mean_kl:.6f}", "max KL": f"{report.max_kl:.6f}",
        "top-1 agreement": f"{report.top1_agreement:.4f}",
        "perplexity": f"{report.perplexity:.4f} (reference {report.reference_perplexity:.4f})",
        "delta p": "  ".join(f"{k} {v:+.4f}" for k, v in report.delta_p.items()),
    })

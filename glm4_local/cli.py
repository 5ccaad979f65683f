"""The `glm4-local` command: each command parses options and calls one library function."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from glm4_local.errors import Glm4LocalError

app = typer.Typer(
    name="glm4-local", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="GLM-4-9B-Chat on your own machine: convert checkpoints to GGUF, inspect and verify them.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
R = TypeVar("R")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"glm4-local: error: {message}", markup=False)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Library exceptions become one line on stderr and an exit code; never a traceback."""
    try:
        yield
    except Glm4LocalError as e:
        raise fail(str(e), e.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted; no output file was left behind", 130) from None


def run(func: Callable[..., R], *args: object, **kwargs: object) -> R:
    with user_errors():
        return func(*args, **kwargs)


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Checkpoint folder, or a Hub repo id in the local HF cache.")],
    outtype: Annotated[str, typer.Option("--outtype", "-t", help="f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 "
                                         "q4_k_m q5_k_m q6_k")] = "q4_k_m",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: "
                                                "models/<name>-<TYPE>.gguf).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    download: Annotated[bool, typer.Option("--download", help="Fetch a Hub repo into the HF cache first "
                                           "(needs the [download] extra).")] = False,
    imatrix: Annotated[Path | None, typer.Option("--imatrix", help="Importance matrix (GGUF, from "
                                                 "llama-imatrix) for the quantizer.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Convert a GLM-4 Hugging Face checkpoint to a GGUF file."""
    from glm4_local.convert.pipeline import convert as convert_checkpoint
    from glm4_local.progress import RichProgress

    show = not quiet and err.is_terminal
    bar = RichProgress(err) if show else None
    with bar or nullcontext():
        result = run(convert_checkpoint, source, outtype=outtype, output=output, force=force,
                     download=download, imatrix=imatrix, progress=bar)
    if not quiet:
        gb = result.input_bytes / 1e9
        err.print(f"wrote {result.path} ({result.output_bytes / 1e9:.2f} GB, {result.out_type.label}) "
                  f"from {gb:.2f} GB in {result.seconds:.1f} s", markup=False)
    out.print(str(result.path), markup=False)


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a GGUF file and flag settings known to mis-tokenize GLM-4."""
    from glm4_local.gguf_file import summarize

    summary = run(summarize, file)
    if as_json:
        data = asdict(summary) | {"path": str(summary.path)}
        out.print(json.dumps(data, ensure_ascii=False, indent=2), markup=False)
    else:
        rows = {
            "file": str(summary.path), "architecture": summary.architecture, "name": summary.name or "-",
            "file type": summary.file_type, "size": f"{summary.size_bytes / 1e9:.3f} GB",
            "parameters": f"{summary.parameters:,}", "context length": str(summary.context_length),
            "vocabulary": f"{summary.vocab_size:,} tokens, {summary.merges:,} merges, "
                          f"pre-tokenizer {summary.pre_tokenizer}",
            "special tokens": " ".join(f"{t}={i}" for t, i in summary.special_tokens.items()) or "-",
            "chat template": "yes" if summary.chat_template else "no",
        }
        for key, value in rows.items():
            out.print(f"{key:>15}: {value}", markup=False)
    for warning in summary.warnings:
        err.print(f"warning: {warning}", markup=False)


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="The GGUF to check.")],
    source: Annotated[str, typer.Option("--source", help="The checkpoint it was converted from.")],
) -> None:
    """Compare a GGUF's logits in llama.cpp with a numpy forward pass over the source weights."""
    from glm4_local.convert.verify import verify as verify_gguf

    report = run(verify_gguf, file, source)
    lim = report.limits
    out.print(f"file type {report.file_type}, {report.positions} positions", markup=False)
    out.print(f"max abs error  {report.max_abs_error:.6f} (limit {lim.max_abs_error})", markup=False)
    out.print(f"top-1 agree    {report.top1_agreement:.4f} (limit {lim.min_top1})", markup=False)
    out.print(f"mean KL        {report.mean_kl:.3e} (limit {lim.max_mean_kl})", markup=False)
    if not report.passed:
        raise fail(f"{file}: disagrees with the reference beyond the {report.file_type} limits", 2)
    out.print("OK", markup=False)


"""The `glm4-local` command: each command parses options and calls one library function."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from glm4_local import cli_options as o
from glm4_local.chat.options import DEFAULT_BATCH, DEFAULT_CTX, RuntimeOptions
from glm4_local.chat.tool_exec import DEFAULT_TOOL_TIMEOUT
from glm4_local.convert.outtypes import DEFAULT_OUT_TYPE, OUT_TYPES
from glm4_local.core.errors import Glm4LocalError, OutputExistsError, SourceNotCachedError

app = typer.Typer(
    name="glm4-local", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
R = TypeVar("R")


def examples(*lines: str) -> str:
    """An --help epilog of example command lines, kept as written (\b stops click re-wrapping it)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _show_version(value: bool) -> None:
    if value:
        from glm4_local import __version__

        out.print(f"glm4-local {__version__}", markup=False)
        raise typer.Exit(0)


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """GLM-4-9B-Chat on your own machine: convert checkpoints to GGUF, check them, and chat."""


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"glm4-local: error: {message}", markup=False)
    return typer.Exit(code)


def with_hint(error: Glm4LocalError) -> str:
    """The library's message, plus what to type about it (only the CLI knows its flags)."""
    if isinstance(error, OutputExistsError):
        return f"{error} (use --force to overwrite)"
    if isinstance(error, SourceNotCachedError):
        repo = error.repo_id
        return (f"{error}; download it with `glm4-local convert {repo} --download` "
                f"(needs `pip install \"glm4-local[download]\"`) or `huggingface-cli download {repo}`")
    return str(error)


@contextmanager
def user_errors(on_interrupt: str = "interrupted") -> Iterator[None]:
    """Library exceptions become one line on stderr and an exit code; never a traceback."""
    try:
        yield
    except Glm4LocalError as e:
        raise fail(with_hint(e), e.exit_code) from None
    except KeyboardInterrupt:
        raise fail(on_interrupt, 130) from None
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise typer.Exit(0) from None


def run(func: Callable[..., R], *args: object, on_interrupt: str = "interrupted", **kwargs: object) -> R:
    with user_errors(on_interrupt):
        return func(*args, **kwargs)


def parsed(flag: str, parse: Callable[[str], R], text: str) -> R:
    """An option's typed value; a value it cannot take is one line naming the flag."""
    try:
        return parse(text)
    except ValueError as e:
        raise fail(f"{flag} {e}") from None


@app.command(epilog=examples(
    "glm4-local convert THUDM/glm-4-9b-chat                   # -> models/glm-4-9b-chat-Q4_K_M.gguf",
    "glm4-local convert ./glm-4-9b-chat -t q8_0 -o chat-q8.gguf",
    "glm4-local convert ./glm-4-9b-chat -t q4_k_m --imatrix auto"))
def convert(
    source: Annotated[str, typer.Argument(help="Checkpoint folder, or a Hub repo id in the local HF cache.")],
    outtype: Annotated[str, typer.Option("--outtype", "-t", metavar="TYPE", help="One of: " + " ".join(OUT_TYPES)
                                         )] = DEFAULT_OUT_TYPE.name,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: "
                                                "models/<name>-<TYPE>.gguf).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    download: Annotated[bool, typer.Option("--download", help="Fetch a Hub repo into the HF cache first "
                                           "(needs the [download] extra).")] = False,
    imatrix: Annotated[str | None, typer.Option("--imatrix", help="Importance matrix for the quantizer: 'auto' "
                                                "measures one on the built-in text (saved as <output>.imatrix), "
                                                "or a file from llama-imatrix (GGUF).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Convert a GLM-4 Hugging Face checkpoint to a GGUF file."""
    from glm4_local.convert.outtypes import out_type
    from glm4_local.convert.pipeline import convert as convert_checkpoint
    from glm4_local.convert.pipeline import imatrix_choice
    from glm4_local.frontends.progress import RichProgress

    kind = run(out_type, outtype)
    show = not quiet and err.is_terminal
    bar = RichProgress(err) if show else None
    with bar or nullcontext():
        result = run(convert_checkpoint, source, kind, output=output, force=force,
                     download=download, imatrix=imatrix_choice(imatrix), progress=bar,
                     notify=lambda message: err.print(message, markup=False),
                     on_interrupt="interrupted; no output file was left behind")
    if not quiet:
        gb = result.input_bytes / 1e9
        err.print(f"wrote {result.path} ({result.output_bytes / 1e9:.2f} GB, {result.out_type.label}) "
                  f"from {gb:.2f} GB in {result.seconds:.1f} s", markup=False)
    out.print(str(result.path), markup=False)


@app.command(epilog=examples("glm4-local info models/glm-4-9b-chat-Q4_K_M.gguf", "glm4-local info FILE --json"))
def info(
    file: Annotated[Path, typer.Argument(help="A GGUF file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a GGUF file and flag settings known to mis-tokenize GLM-4."""
    from glm4_local.gguf_tools.summary import summarize

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
            "stops on": " ".join(f"{t}={i}" for t, i in summary.end_of_generation.items()) or "-",
            "chat template": "yes" if summary.chat_template else "no",
        }
        for key, value in rows.items():
            out.print(f"{key:>15}: {value}", markup=False)
    for warning in summary.warnings:
        err.print(f"warning: {warning}", markup=False)


@app.command(epilog=examples("glm4-local verify models/glm-4-9b-chat-Q4_K_M.gguf --source THUDM/glm-4-9b-chat"))
def verify(
    file: Annotated[Path, typer.Argument(help="The GGUF to check.")],
    source: Annotated[str, typer.Option("--source", help="The checkpoint it was converted from.")],
) -> None:
    """Compare a GGUF's logits in llama.cpp with a numpy forward pass over the source weights."""
    from glm4_local.gguf_tools.verify import verify as verify_gguf

    with err.status("running the file in llama.cpp and the reference forward pass…") if err.is_terminal \
            else nullcontext():
        report = run(verify_gguf, file, source)
    lim = report.limits
    out.print(f"file type {report.file_type}, {report.positions} positions", markup=False)
    out.print(f"max abs error  {report.max_abs_error:.6f} (limit {lim.max_abs_error})", markup=False)
    out.print(f"top-1 agree    {report.top1_agreement:.4f} (limit {lim.min_top1})", markup=False)
    out.print(f"mean KL        {report.mean_kl:.3e} (limit {lim.max_mean_kl})", markup=False)
    if not report.passed:
        raise fail(f"{file}: disagrees with the reference beyond the {report.file_type} limits", 2)
    out.print("OK", markup=False)


@app.command(epilog=examples("glm4-local repair glm-4-9b-chat.Q4_K_M.gguf",
                             "glm4-local repair downloaded.gguf -o fixed.gguf --template my.jinja"))
def repair(
    file: Annotated[Path, typer.Argument(help="A GLM-4-9B GGUF made by another tool (any quantization).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: "
                                                "<name>-repaired.gguf beside the input).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    template: Annotated[Path | None, typer.Option("--template", help="Chat template (Jinja) to put in the file "
                                                  "instead of the published one.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fix a downloaded GLM-4 GGUF's tokenizer, stop tokens and chat template; tensors are copied as they are."""
    from glm4_local.frontends.progress import RichProgress
    from glm4_local.gguf_tools.repair import repair as repair_gguf

    bar = RichProgress(err) if not quiet and err.is_terminal else None
    with bar or nullcontext():
        report = run(repair_gguf, file, output, force, template, bar,
                     on_interrupt="interrupted; no output file was left behind")
    for change in report.changes:
        err.print(f"changed: {change}", markup=False)
    if report.output is None:
        err.print(f"{file}: already right; nothing written", markup=False)
    if report.check is not None:
        err.print(report.check.summary(), markup=False)
        if not report.check.exact:
            raise fail(f"{report.output or file}: still tokenizes differently from the model's tokenizer", 2)
    if report.output is not None:
        out.print(str(report.output), markup=False)


@app.command(name="eval", epilog=examples(
    "glm4-local eval models/glm-4-9b-chat-Q4_K_M.gguf --reference models/glm-4-9b-chat-F16.gguf",
    "glm4-local eval Q4_K_M --reference F16 --text my-notes.txt --json"))
def evaluate(
    model: Annotated[str, typer.Argument(help="The GGUF to measure (path or name in ./models).")],
    reference: Annotated[str, typer.Option("--reference", help="Its 16-bit or f32 parent GGUF.")],
    text: Annotated[Path | None, typer.Option("--text", help="UTF-8 text to read (default: the built-in "
                                              "Chinese/English/code text).")] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="Window size in tokens.")] = 512,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """How far a quantized GGUF is from its parent: KL divergence, top-1 agreement, perplexity."""
    from glm4_local.chat.models import resolve_model
    from glm4_local.core.jsonfile import read_text
    from glm4_local.frontends.progress import RichProgress
    from glm4_local.gguf_tools.evaluate import evaluate as evaluate_gguf

    model_path, reference_path = run(resolve_model, model), run(resolve_model, reference)
    sample = run(read_text, text) if text is not None else None
    bar = RichProgress(err) if err.is_terminal else None
    with bar or nullcontext():
        report = run(evaluate_gguf, model_path, reference_path, sample, ctx, threads, bar)
    if as_json:
        out.print(json.dumps(report.as_json(), indent=2), markup=False)
        return
    rows = {
        "tokens scored": f"{report.tokens:,}", "mean KL": f"{report.mean_kl:.6f}", "max KL": f"{report.max_kl:.6f}",
        "top-1 agreement": f"{report.top1_agreement:.4f}",
        "perplexity": f"{report.perplexity:.4f} (reference {report.reference_perplexity:.4f})",
        "delta p": "  ".join(f"{k} {v:+.4f}" for k, v in report.delta_p.items()),
    }
    for key, value in rows.items():
        out.print(f"{key:>15}: {value}", markup=False)


CHAT_EPILOG = examples(
    "glm4-local chat                                  # the newest model in ./models",
    "glm4-local chat glm-4-9b-chat-Q4_K_M --system \"You are concise.\"",
    "glm4-local chat MODEL -p \"Summarise this:\" < notes.txt",
    "glm4-local chat MODEL --tools tools.json --tool-exec ./tool.py",
    "glm4-local chat --resume",
) + """

\b
In the chat: /help /show /set NAME VALUE /system [TEXT|--clear] /reset /retry /undo /save FILE
/load FILE /stats /exit. Enter sends, Alt-Enter adds a line, Ctrl-C stops a reply, Ctrl-D leaves.
Sampling defaults come from the GGUF (general.sampling.*), else GLM-4's own (temperature 0.8, top_p 0.8)."""


def runtime_options_of(ctx: str, gpu_layers: str, threads: int | None, batch: int, flash_attn: bool,
                       cache_type_k: str, cache_type_v: str, mlock: bool, no_mmap: bool) -> RuntimeOptions:
    """How chat and serve run a model, from their shared options."""
    from glm4_local.chat import options as opts

    return opts.RuntimeOptions(
        ctx=parsed("--ctx", opts.parse_context_size, ctx),
        gpu_layers=parsed("--gpu-layers", opts.parse_gpu_layers, gpu_layers),
        threads=threads, batch=batch, flash_attn=flash_attn,
        cache_type_k=parsed("--cache-type-k", opts.parse_cache_type, cache_type_k),
        cache_type_v=parsed("--cache-type-v", opts.parse_cache_type, cache_type_v), mlock=mlock, mmap=not no_mmap,
    )


@app.command(epilog=CHAT_EPILOG)
def chat(
    model: o.ModelArg = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer this once and exit "
                                               "(stdin, if piped, is appended).")] = None,
    tools: Annotated[Path | None, typer.Option("--tools", help="OpenAI-style JSON list of functions.")] = None,
    tool_exec: Annotated[Path | None, typer.Option("--tool-exec", help="Executable that answers tool calls "
                                                   "(the call arrives as JSON on stdin).")] = None,
    tool_timeout: Annotated[float, typer.Option("--tool-timeout", help="Seconds a --tool-exec call may take "
                                                "before it is stopped (the model is told).")] = DEFAULT_TOOL_TIMEOUT,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last autosaved conversation.")] = False,
    temp: Annotated[float | None, typer.Option("--temp", help="Temperature (0: greedy).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling: keep the most likely tokens "
                                                "up to this probability mass.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Keep only the K most likely tokens (0: off).")
                     ] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", help="Drop tokens less likely than this fraction of "
                                                "the most likely one.")] = None,
    repeat_penalty: Annotated[float | None, typer.Option("--repeat-penalty", help="Penalty for repeating recent "
                                                         "tokens (1: off).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable sampling.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Longest reply, in tokens.")] = None,
    ctx: o.Ctx = str(DEFAULT_CTX),
    gpu_layers: o.GpuLayers = "auto",
    threads: o.Threads = None,
    batch: o.Batch = DEFAULT_BATCH,
    flash_attn: o.FlashAttn = False,
    cache_type_k: o.CacheTypeK = "f16",
    cache_type_v: o.CacheTypeV = "f16",
    mlock: o.Mlock = False,
    no_mmap: o.NoMmap = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show token counts and speed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Non-interactive: print content, tool_calls, usage "
                                          "(summed over every model call of the answer), "
                                          "timings as JSON.")] = False,
) -> None:
    """Chat with GLM-4 in the terminal (or answer once with -p / piped input)."""
    from glm4_local.chat.options import SamplingOptions
    from glm4_local.chat.tool_exec import ToolRunner
    from glm4_local.frontends.commands import start_chat

    runtime_options = runtime_options_of(ctx, gpu_layers, threads, batch, flash_attn, cache_type_k, cache_type_v,
                                         mlock, no_mmap)
    sampling = SamplingOptions(temp, top_p, top_k, min_p, repeat_penalty, seed, max_tokens)
    runner = run(ToolRunner.for_path, tool_exec, tool_timeout) if tool_exec else None
    run(start_chat, model, runtime_options, sampling, system=system, prompt=prompt, tools_path=tools,
        tool_exec=runner, resume=resume, verbose=verbose, as_json=as_json, errors=err)


@app.command(epilog=examples(
    "glm4-local serve                                 # the newest model in ./models, on 127.0.0.1:8000",
    "glm4-local serve MODEL --port 8080 --api-key \"$KEY\" --parallel 4 --ctx 16384",
) + """

\b
Then point any OpenAI client at it: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY).
Routes: /v1/chat/completions (tools, tool_choice, response_format, streaming), /v1/completions,
/v1/models, /health, /metrics. Each of the --parallel slots has --ctx tokens of context.""")
def serve(
    model: o.ModelArg = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (another than 127.0.0.1 exposes "
                                      "the model to your network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free one).", min=0, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="GLM4_LOCAL_API_KEY",
                                                help="Require 'Authorization: Bearer KEY' on every route but "
                                                "/health.")] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Requests decoded together (each slot keeps its "
                                          "own context and prompt cache).", min=1, max=64)] = 1,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait for a slot; more get 503 "
                                           "with Retry-After.", min=1)] = 64,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow browser pages from this "
                                                          "origin (repeatable; '*' for any).")] = None,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body, in MiB.", min=0.001)
                           ] = 8.0,
    ctx: o.Ctx = str(DEFAULT_CTX),
    gpu_layers: o.GpuLayers = "auto",
    threads: o.Threads = None,
    batch: o.Batch = DEFAULT_BATCH,
    flash_attn: o.FlashAttn = False,
    cache_type_k: o.CacheTypeK = "f16",
    cache_type_v: o.CacheTypeV = "f16",
    mlock: o.Mlock = False,
    no_mmap: o.NoMmap = False,
) -> None:
    """Serve GLM-4 over an OpenAI-compatible HTTP API, with GLM-4's own function calling."""
    from glm4_local.chat.models import resolve_model
    from glm4_local.frontends.serve import ServeOptions
    from glm4_local.frontends.serve import serve as serve_model

    runtime_options = runtime_options_of(ctx, gpu_layers, threads, batch, flash_attn, cache_type_k, cache_type_v,
                                         mlock, no_mmap)
    with user_errors(on_interrupt="stopped"):
        options = ServeOptions(host, port, api_key, parallel, max_queue, tuple(cors_origin or ()),
                               int(max_body_mb * 1024 * 1024))
        serve_model(resolve_model(model), runtime_options, options,
                    say=lambda line: err.print(line, markup=False),
                    warn=lambda line: err.print(f"warning: {line}", style="yellow", markup=False))


@app.command(epilog=examples("glm4-local render conversation.json",
                             "glm4-local render conversation.json --tools tools.json --model MODEL --tokens"))
def render(
    conversation: Annotated[Path, typer.Argument(help="OpenAI-style messages JSON (as /save writes).")],
    tools: Annotated[Path | None, typer.Option("--tools", help="OpenAI-style JSON list of functions.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Use this model's template (and vocabulary "
                                              "for --tokens).")] = None,
    tokens: Annotated[bool, typer.Option("--tokens", help="Print the token ids the chat would feed, as JSON.")
                      ] = False,
) -> None:
    """Print the exact prompt GLM-4 sees for a conversation (no trailing newline)."""
    from glm4_local.frontends.commands import render_conversation

    if tokens and model is None:
        raise fail("--tokens needs --model (token ids come from the model's vocabulary)")
    result = run(render_conversation, conversation, tools, model, tokens)
    if isinstance(result, list):
        out.print(json.dumps(result), markup=False)
    else:
        sys.stdout.buffer.write(result.encode("utf-8"))
        sys.stdout.flush()


@app.command(epilog=examples("glm4-local doctor"))
def doctor() -> None:
    """What this machine's llama.cpp can do: offload, CPU features, RAM, and which GLM-4 fits."""
    from glm4_local.frontends.doctor import collect, render

    for line in render(run(collect)):
        out.print(line, markup=False)

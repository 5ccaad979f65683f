"""The `glm4-local` command: each command parses options and calls one library function."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from glm4_local import cli_options as o
from glm4_local.chat.options import RuntimeOptions
from glm4_local.cli_errors import err, fail, out, run, run_program, stopped_like_ctrl_c, user_errors
from glm4_local.cli_options import CHAT_TOOLS, RUNTIME, SERVE, TOOLS, with_options
from glm4_local.convert.outtypes import DEFAULT_OUT_TYPE, OUT_TYPES
from glm4_local.frontends.repl_commands import COMMANDS
from glm4_local.server.options import ServeOptions
from glm4_local.tools.options import ToolOptions
from glm4_local.tools.program import DEFAULT_TOOL_TIMEOUT

app = typer.Typer(
    name="glm4-local", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def examples(*lines: str) -> str:
    """An --help epilog of example command lines, kept as written (\b stops click re-wrapping it)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _show_version(value: bool) -> None:
    if value:
        from glm4_local import __version__

        out.print(f"glm4-local {__version__}", markup=False)
        raise typer.Exit(0)


@app.callback()
def options(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """GLM-4-9B-Chat on your own machine: convert checkpoints to GGUF, check them, and chat."""


def main() -> None:
    """The `glm4-local` program: the Typer app, and one line (not a traceback) when stdout cannot be
    written: a full disk, a closed pipe (which ends the program quietly, as `| head` expects)."""
    run_program(lambda: app(args=resume_file_argument(sys.argv[1:]), prog_name="glm4-local"))


def resume_file_argument(args: list[str]) -> list[str]:
    """`chat --resume FILE.json` as users write it: Typer's flags take no optional value, so the file
    after --resume is handed to the hidden --resume-file."""
    fixed = list(args)
    for i, arg in enumerate(fixed[:-1]):
        if arg == "--resume" and fixed[i + 1].lower().endswith(".json"):
            fixed[i] = "--resume-file"
    return [f"--resume-file={a.split('=', 1)[1]}" if a.startswith("--resume=") else a for a in fixed]


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
                                           "(`glm4-local pull REPO` also converts, into the store).")] = False,
    imatrix: Annotated[str | None, typer.Option("--imatrix", help="Importance matrix for the quantizer: 'auto' "
                                                "measures one on the built-in text (saved as <output>.imatrix), "
                                                "or a file from llama-imatrix (GGUF).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Convert a GLM-4 Hugging Face checkpoint to a GGUF file."""
    from glm4_local.convert.outtypes import out_type
    from glm4_local.convert.pipeline import imatrix_choice
    from glm4_local.frontends import files

    kind = run(out_type, outtype)
    with stopped_like_ctrl_c():
        run(files.convert, source, kind, output, force, download, imatrix_choice(imatrix), quiet, out, err,
            on_interrupt="interrupted; no output file was left behind")


@app.command(epilog=examples(
    "glm4-local pull                                   # glm-4-9b-chat at Q4_K_M, into the store",
    "glm4-local pull glm-4-9b-chat:q8_0",
    "glm4-local pull legraphista/glm-4-9b-chat-GGUF:Q6_K",
    "glm4-local pull owner/repo/some-file.gguf",
    "glm4-local pull THUDM/glm-4-9b-chat -t q8_0       # a checkpoint: downloaded and converted") + """

\b
Downloads resume after an interruption, are checked against the Hub's sha256, and are repaired
(tokenizer, stop tokens, template) before they appear in the store ($GLM4_LOCAL_HOME/models).
HF_ENDPOINT and HF_TOKEN are honoured. Nothing else glm4-local does contacts the network.""")
def pull(
    name: Annotated[str | None, typer.Argument(help="A tag (glm-4-9b-chat[:QUANT]), owner/repo[:QUANT] or "
                                               "owner/repo/FILE.gguf; default glm-4-9b-chat:Q4_K_M.")] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="A branch, tag or commit of the repository "
                                                 "(default: main).")] = None,
    outtype: Annotated[str | None, typer.Option("--outtype", "-t", metavar="TYPE", help="For a checkpoint: the "
                                                "type to convert to (default q4_k_m).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if the store has it, or replace "
                                        "another model of the same name.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Get a ready GLM-4 GGUF from the Hugging Face Hub into the model store."""
    from glm4_local.frontends.store_view import INTERRUPTED, pull_model

    with stopped_like_ctrl_c():
        run(pull_model, name, revision, outtype, force, quiet, out, err, on_interrupt=INTERRUPTED)


@app.command(name="list", epilog=examples("glm4-local list", "glm4-local list --json"))
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The models chat and serve can find: name, size, quantization, context, where each came from."""
    from glm4_local.frontends.store_view import list_models as show

    run(show, as_json, out)


@app.command(epilog=examples("glm4-local rm glm-4-9b-chat-Q8_0", "glm4-local rm --partial"))
def rm(
    names: Annotated[list[str] | None, typer.Argument(help="Models of the store, as `list` names them.")] = None,
    partial: Annotated[bool, typer.Option("--partial", help="Also remove interrupted downloads (a later pull "
                                          "then starts them again).")] = False,
) -> None:
    """Remove pulled models from the store (files elsewhere are left to you)."""
    from glm4_local.frontends.store_view import remove_models

    if not names and not partial:
        raise fail("give the models to remove (`glm4-local list` names them), or --partial")
    run(remove_models, names or [], partial, out)


@app.command(epilog=examples("glm4-local info models/glm-4-9b-chat-Q4_K_M.gguf", "glm4-local info glm-4-9b-chat-Q4_K_M",
                             "glm4-local info FILE --json"))
def info(
    file: Annotated[str, typer.Argument(help="A GGUF file, or a model's name as `list` shows it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a GGUF file and flag settings known to mis-tokenize GLM-4."""
    from glm4_local.frontends import files

    run(files.info, file, as_json, out, err)


@app.command(epilog=examples("glm4-local verify models/glm-4-9b-chat-Q4_K_M.gguf --source THUDM/glm-4-9b-chat"))
def verify(
    file: Annotated[Path, typer.Argument(help="The GGUF to check.")],
    source: Annotated[str, typer.Option("--source", help="The checkpoint it was converted from.")],
) -> None:
    """Compare a GGUF's logits in llama.cpp with a numpy forward pass over the source weights."""
    from glm4_local.frontends import files

    run(files.verify, file, source, out, err)


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
    from glm4_local.frontends import files

    with stopped_like_ctrl_c():
        run(files.repair, file, output, force, template, quiet, out, err,
            on_interrupt="interrupted; no output file was left behind")


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
    from glm4_local.frontends import files

    run(files.evaluate, model, reference, text, ctx, threads, as_json, out, err)


CHAT_EPILOG = examples(
    "glm4-local chat                                  # the newest model in ./models",
    "glm4-local chat glm-4-9b-chat-Q4_K_M --system \"You are concise.\"",
    "glm4-local chat MODEL -p \"Summarise this:\" < notes.txt",
    "glm4-local chat MODEL --file report.pdf -p \"What are the three main findings?\"",
    "glm4-local chat MODEL --tools tools.json --tool-exec ./tool.py",
    "glm4-local chat MODEL --python --browser zim:wikipedia_en_all_nopic.zim",
    "glm4-local chat MODEL --browser searxng:http://127.0.0.1:8888 --mcp mcp.json",
    "glm4-local chat --resume",
    "glm4-local chat --resume conversation.json         # a conversation saved with /save",
) + """

\b
In the chat: """ + " ".join(usage for usage, _ in COMMANDS) + """.
Enter sends, Alt-Enter adds a line, Ctrl-C stops a reply, Ctrl-D leaves.
Sampling defaults come from the GGUF (general.sampling.*), else GLM-4's own (temperature 0.8, top_p 0.8)."""


@app.command(epilog=CHAT_EPILOG)
@with_options(RUNTIME, CHAT_TOOLS)
def chat(
    model: o.ModelArg = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer this once and exit "
                                               "(stdin, if piped, is appended).")] = None,
    functions: Annotated[Path | None, typer.Option("--tools", help="OpenAI-style JSON list of functions.")] = None,
    tool_exec: Annotated[Path | None, typer.Option("--tool-exec", help="Executable that answers tool calls "
                                                   "(the call arrives as JSON on stdin).")] = None,
    tool_timeout: Annotated[float, typer.Option("--tool-timeout", help="Seconds a --tool-exec call may take "
                                                "before it is stopped (the model is told).")] = DEFAULT_TOOL_TIMEOUT,
    cache_size: Annotated[float, typer.Option("--cache-size", metavar="GIB", help="GiB of long prompts' KV state "
                                              "kept on disk ($GLM4_LOCAL_HOME/cache/prompts), so a resumed chat or "
                                              "the same document again is not read twice; 0: off.", min=0)] = 8.0,
    file: Annotated[list[Path] | None, typer.Option("--file", metavar="PATH", help="A document for the first "
                                                   "message (text, Markdown, HTML, PDF, DOCX; repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", metavar="[FILE]", help="Continue the last autosaved "
                                         "conversation, or the one in FILE (.json, as /save writes), in the "
                                         "context it was held in.")] = False,
    resume_file: Annotated[Path | None, typer.Option("--resume-file", hidden=True)] = None,
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show token counts and speed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Non-interactive: print content, tool_calls, usage "
                                          "(summed over every model call of the answer), "
                                          "timings as JSON.")] = False,
    *, runtime: RuntimeOptions, tools: ToolOptions,
) -> None:
    """Chat with GLM-4 in the terminal (or answer once with -p / piped input)."""
    from glm4_local.frontends.commands import prompt_cache_dir, start_chat
    from glm4_local.tools.program import ToolRunner

    sampling = {"temperature": temp, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                "repeat_penalty": repeat_penalty, "seed": seed}
    runner = run(ToolRunner.for_path, tool_exec, tool_timeout) if tool_exec else None
    runtime = runtime.with_prompt_cache(prompt_cache_dir(), cache_size)
    tool_options = replace(tools, python=tools.python or tools.unconfined, program=runner)
    with stopped_like_ctrl_c():  # a closed terminal or `kill` ends the tools (kernel, servers, files) too
        run(start_chat, model, runtime, sampling, max_tokens=max_tokens, system=system, prompt=prompt,
            tools_path=functions, tool_options=tool_options, files=tuple(file or ()), resume=resume_file or resume,
            verbose=verbose,
            as_json=as_json, errors=err)


@app.command(epilog=examples(
    "glm4-local serve                                 # the newest model in ./models, on 127.0.0.1:8000",
    "glm4-local serve MODEL --port 8080 --api-key \"$KEY\" --parallel 4 --ctx 16384",
) + """

\b
Then point any OpenAI client at it: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY).
Open http://127.0.0.1:8000/ in a browser to chat. Routes: /v1/chat/completions (tools, tool_choice,
response_format, streaming), /v1/completions, /v1/responses, /v1/models, /health, /metrics; and
Ollama's /api/chat, /api/generate, /api/tags, /api/show, /api/ps (--port 11434 for apps that expect Ollama).
Each of the --parallel slots has --ctx tokens of context.""")
@with_options(RUNTIME, SERVE, TOOLS)
def serve(
    model: o.ModelArg = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", metavar="DIR", help="Keep long prompts' KV "
                                                   "state in this folder, so they are not read again after a "
                                                   "restart.")] = None,
    cache_size: Annotated[float, typer.Option("--cache-size", metavar="GIB", help="GiB --cache-dir may hold.",
                                              min=0)] = 8.0,
    *, runtime: RuntimeOptions, serving: ServeOptions, tools: ToolOptions,
) -> None:
    """Serve GLM-4 over an OpenAI-compatible HTTP API, with GLM-4's own function calling, and a chat page at /."""
    from glm4_local.frontends.serve import serve as serve_model
    from glm4_local.frontends.store_view import model_or_first_pull

    runtime = runtime.with_prompt_cache(cache_dir, cache_size)
    with user_errors(on_interrupt="stopped"):
        options = replace(serving, tools=tools)
        serve_model(model_or_first_pull(model, err), runtime, options,
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
    from glm4_local.frontends.commands import render

    if tokens and model is None:
        raise fail("--tokens needs --model (token ids come from the model's vocabulary)")
    run(render, conversation, tools, model, tokens, out)


@app.command(epilog=examples("glm4-local cache", "glm4-local cache --clear"))
def cache(
    clear: Annotated[bool, typer.Option("--clear", help="Remove every saved prompt.")] = False,
    folder: Annotated[Path | None, typer.Option("--dir", help="Another folder (serve's --cache-dir).")] = None,
) -> None:
    """The prompts kept on disk (their KV state): list them, or clear them."""
    from glm4_local.frontends.commands import prompt_cache_dir, show_prompt_cache

    run(show_prompt_cache, folder or prompt_cache_dir(), clear, out)


@app.command(epilog=examples("glm4-local doctor"))
def doctor() -> None:
    """What this machine's llama.cpp can do: offload, CPU features, RAM, and which GLM-4 fits."""
    from glm4_local.frontends.doctor import show

    run(show, out)

"""Seeded fuzzing, bounded in time: every case ends in a correct result or one clear line naming the
file and the problem; never a traceback, a signal death or a hang.

Broken GGUF headers (truncated, bytes flipped, values of random types), hostile chat templates,
conversations and tools of random JSON, broken config.json and safetensors headers, misbehaving
tool programs. The counts are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest
from helpers import craft

from glm4_local.chat.schema import SchemaError, check_messages, check_tools
from glm4_local.chat.template import ChatTemplate
from glm4_local.core.errors import Glm4LocalError
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.families.glm4_replies import to_glm_messages
from glm4_local.core.families.replies import ToolCall
from glm4_local.core.gguf.header import read_gguf_header
from glm4_local.tools.program import run_tool

V = gguf.GGUFValueType
RUNNER = Path(__file__).parent / "helpers" / "fuzz_runner.py"
MAX_SECONDS_PER_CASE = 15.0


def run_cases(cases: list[list[str]], tmp_path: Path, timeout: float = 600) -> list[dict[str, Any]]:
    """Run CLI cases in one child; fail on a signal death, a hang or an escaped exception."""
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, str(RUNNER), str(tmp_path / "cases.json")], capture_output=True,
                          text=True, timeout=timeout)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    results = [line for line in lines if "case" in line]
    if done.returncode != 0:
        last = next((line["start"] for line in reversed(lines) if "start" in line), None)
        case = cases[last] if last is not None else None
        pytest.fail(f"the runner died (code {done.returncode}) on case {last}: {case}\n{done.stderr[-3000:]}")
    return results


def check_outcomes(cases: list[list[str]], results: list[dict[str, Any]], name_part: Callable[[list[str]], str]
                   ) -> dict[str, int]:
    counts = {"ok": 0, "refused": 0}
    assert len(results) == len(cases)
    for case, result in zip(cases, results, strict=True):
        assert not result["escaped"], (case, result)
        assert result["seconds"] < MAX_SECONDS_PER_CASE, (case, result)
        if result["code"] == 0:
            counts["ok"] += 1
            continue
        assert result["code"] in (1, 2), (case, result)
        stderr = result["stderr"]
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, (case, stderr)
        assert name_part(case) in stderr, (case, stderr)
        counts["refused"] += 1
    return counts


# -- GGUF headers ---------------------------------------------------------------------------------------

RANDOM_VALUES: list[tuple[V, Any, V | None]] = [
    (V.STRING, "x", None), (V.STRING, "", None), (V.UINT32, 0, None), (V.UINT32, 2**32 - 1, None),
    (V.INT32, -5, None), (V.FLOAT32, float("nan"), None), (V.FLOAT32, -1.0, None), (V.BOOL, True, None),
    (V.UINT64, 2**64 - 1, None), (V.ARRAY, [1, 2, 3], V.INT32), (V.ARRAY, ["a b", "c"], V.STRING),
    (V.ARRAY, craft.deep_array(50), V.ARRAY), (V.ARRAY, [], V.UINT8),
]


def mutated_ggufs(source: Path, folder: Path, seed: int, n_truncated: int, n_flipped: int, n_values: int
                  ) -> list[Path]:
    rng = random.Random(seed)
    header = read_gguf_header(source)
    data = source.read_bytes()
    files = []
    for i in range(n_truncated):
        path = folder / f"cut{i}.gguf"
        path.write_bytes(data[: rng.randrange(4, header.data_start)])
        files.append(path)
    for i in range(n_flipped):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(0, header.data_start)] = rng.randrange(256)
        path = folder / f"flip{i}.gguf"
        path.write_bytes(bytes(mutated))
        files.append(path)
    keys = list(header.fields)
    for i in range(n_values):
        key = rng.choice(keys)
        files.append(craft.craft(source, folder / f"value{i}.gguf", {key: rng.choice(RANDOM_VALUES)}))
    return files


def gguf_fuzz(source: Path, tmp_path: Path, seed: int, sizes: tuple[int, int, int]) -> dict[str, int]:
    files = mutated_ggufs(source, tmp_path, seed, *sizes)
    cases = [args for f in files for args in (["info", str(f)], ["chat", str(f), "-p", "hi", "--max-tokens", "3"])]
    counts = check_outcomes(cases, run_cases(cases, tmp_path), lambda case: Path(case[1]).name)
    print(f"\nGGUF fuzz (seed {seed}): {len(cases)} runs over {len(files)} files: {counts}")
    return counts


def test_fuzzed_gguf_headers(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    counts = gguf_fuzz(scripted_gguf("answer"), tmp_path, seed=1, sizes=(3, 6, 6))
    assert counts["refused"] > 0


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [2, 3])
def test_fuzzed_gguf_headers_more(scripted_gguf: Callable[[str], Path], tmp_path: Path, seed: int) -> None:
    gguf_fuzz(scripted_gguf("answer"), tmp_path, seed=seed, sizes=(10, 30, 30))


# -- chat templates ---------------------------------------------------------------------------------------

TEMPLATE_PARTS = [
    "[gMASK]<sop>", "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}", "{{ messages[0]['content'] | tojson }}",
    "{% for i in range(100000) %}{% endfor %}", "{{ 2 ** 10000 }}", "{{ raise_exception('no') }}",
    "{{ messages[99]['content'] }}", "{% for", "{{ }}", "{{ 'a' ~ 'b' }}", "{{ messages|length }}",
    "{{ ''.__class__ }}", "{{ cycler.__init__.__globals__ }}", "{% set x = [] %}{{ x.append(1) }}",
    "{{ messages[0].content[::-1] }}", "{{ 'x' * 100000 }}", "{{ none.attr }}", "{{ 1 / 0 }}",
]


@pytest.mark.heavy
def test_fuzzed_templates(scripted_gguf: Callable[[str], Path], tmp_path: Path) -> None:
    rng = random.Random(7)
    (tmp_path / "c.json").write_text(json.dumps([{"role": "user", "content": "<|user|> hi"}]))
    cases = []
    for i in range(30):
        template = "".join(rng.sample(TEMPLATE_PARTS, rng.randint(1, 4)))
        model = craft.craft(scripted_gguf("answer"), tmp_path / f"t{i}.gguf",
                            {gguf.Keys.Tokenizer.CHAT_TEMPLATE: (V.STRING, template)})
        cases += [["render", str(tmp_path / "c.json"), "--model", str(model), "--tokens"],
                  ["chat", str(model), "-p", "hi", "--max-tokens", "3"]]
    # a template's output is the prompt: one that is too long for the context is refused as such
    counts = check_outcomes(cases, run_cases(cases, tmp_path),
                            lambda case: "chat template" if "--tokens" in case else "")
    print(f"\ntemplate fuzz: {len(cases)} runs: {counts}")


# -- conversations and tools: random JSON in every field ------------------------------------------------

STRINGS = ["", "hi", "<|user|>", "<|assistant|>", "[gMASK]", "<|observation|>", "<sop>", "<|system|>", "a\nb",
           "函数", "\ud800", "x" * 200]
SCHEMA_KEYS = {"role", "content", "metadata", "tool_calls", "tools", "name", "tool_call_id", "function",
               "arguments", "type", "description", "parameters", "id", "properties", "text"}
KEEP = {"system", "user", "assistant", "tool", "observation", "function", "python", "text", "object"}


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(STRINGS)
    if kind == "int":
        return rng.choice([0, -1, 7, 2**70])
    if kind == "float":
        return rng.choice([0.5, -1e300, float("inf")])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "none":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice([*STRINGS, "type", "name"]): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_field(rng: random.Random, key: str, junk: float = 0.2) -> Any:
    """Mostly a value of the right shape with random strings; sometimes anything at all."""
    if rng.random() < junk:
        return random_json(rng)
    text = rng.choice([*STRINGS[:-3], "x"])
    shaped = {
        "content": rng.choice([text, None, [{"type": "text", "text": text}]]),
        "metadata": text, "name": text, "tool_call_id": text,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": rng.choice(["f", text]),
                                                                     "arguments": text}}],
        "tools": [{"type": "function", "function": {"name": "f", "description": text,
                                                    "parameters": {text or "k": {"type": text}}}}],
    }
    return shaped[key]


def random_conversation(rng: random.Random) -> tuple[list[Any], Any]:
    messages = []
    for _ in range(rng.randint(1, 4)):
        message: dict[str, Any] = {"role": rng.choice(["system", "user", "assistant", "tool", "observation", "x"])}
        for key in ("content", "metadata", "tool_calls", "tools", "name", "tool_call_id"):
            if rng.random() < 0.35:
                message[key] = random_field(rng, key)
        messages.append(message)
    tools = random_field(rng, "tools") if rng.random() < 0.5 else None
    return messages, tools


def neutral(value: Any, counter: list[int]) -> Any:
    """The same structure with every string made harmless: what the template's markup alone gives."""
    if isinstance(value, str):
        return value if value in KEEP or not value else "x"
    if isinstance(value, list):
        return [neutral(v, counter) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            counter[0] += 1
            out[k if k in SCHEMA_KEYS else f"k{counter[0]}"] = neutral(v, counter)
        return out
    return value


def specials(messages: list[Any], tools: Any) -> list[str]:
    template = ChatTemplate.of(GLM4_9B)
    return [p.text for p in template.pieces(to_glm_messages(messages, tools)) if p.special]


def test_random_json_in_every_field_never_becomes_a_special_token() -> None:
    rng = random.Random(11)
    counts = {"rendered": 0, "refused": 0}
    for _ in range(800):
        messages, tools = random_conversation(rng)
        try:
            checked = check_messages(messages, "conversation")
            checked_tools = check_tools(tools, "tools") if tools is not None else None
            got = specials(checked, checked_tools)
        except Glm4LocalError:
            counts["refused"] += 1
            continue
        counter = [0]
        expected = specials(neutral(checked, counter), neutral(checked_tools, counter))
        assert got == expected, (messages, tools)
        counts["rendered"] += 1
    print(f"\nconversation fuzz: {counts}")
    assert counts["rendered"] > 150 and counts["refused"] > 150


def test_random_tools_files(tmp_path: Path) -> None:
    rng = random.Random(5)
    (tmp_path / "c.json").write_text(json.dumps([{"role": "user", "content": "hi"}]))
    outcomes = {"ok": 0, "refused": 0}
    for i in range(200):
        tools = random_json(rng) if rng.random() < 0.5 else random_field(rng, "tools", junk=0.0)
        try:
            check_tools(tools, f"tools{i}.json")
            specials([{"role": "user", "content": "hi"}], tools)
            outcomes["ok"] += 1
        except SchemaError as e:
            assert f"tools{i}.json" in str(e) and "\n" not in str(e)
            outcomes["refused"] += 1
    print(f"\ntools fuzz: {outcomes}")


# -- config.json and safetensors headers ----------------------------------------------------------------

def test_fuzzed_configs_and_safetensors_headers(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    rng = random.Random(3)
    source = make_checkpoint()
    config = json.loads((source / "config.json").read_text())
    cases = []
    for i in range(8):
        folder = Path(shutil.copytree(source, tmp_path / f"config{i}"))
        changed = dict(config)
        changed[rng.choice(sorted(config))] = random_json(rng)
        (folder / "config.json").write_text(json.dumps(changed))
        cases.append(["convert", str(folder), "-t", "f16", "-o", str(tmp_path / f"o{i}.gguf"), "-q"])
    weights = (source / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", weights[:8])
    for i in range(8):
        folder = Path(shutil.copytree(source, tmp_path / f"st{i}"))
        mutated = bytearray(weights)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(0, 8 + header_len)] = rng.randrange(256)
        (folder / "model.safetensors").write_bytes(bytes(mutated))
        cases.append(["convert", str(folder), "-t", "f16", "-o", str(tmp_path / f"s{i}.gguf"), "-q"])
    counts = check_outcomes(cases, run_cases(cases, tmp_path), lambda case: Path(case[1]).name)
    print(f"\ncheckpoint fuzz: {counts}")


# -- tool programs ---------------------------------------------------------------------------------------

TOOL_BODIES = [
    "print('fine')", "sys.exit(7)", "sys.stdout.buffer.write(bytes(range(256)))", "import time; time.sleep(30)",
    "sys.stdout.write('y' * 5_000_000)", "sys.stdin.close(); print('closed')", "import os; os.kill(os.getpid(), 9)",
    "raise SystemExit('bad')", "sys.stderr.write('e' * 1_000_000); sys.exit(1)",
]


@pytest.mark.processes
def test_misbehaving_tool_programs(tmp_path: Path) -> None:
    for i, body in enumerate(TOOL_BODIES):
        tool = tmp_path / f"tool{i}.py"
        tool.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
        tool.chmod(0o755)
        started = time.monotonic()
        result = run_tool(tool, ToolCall("f", "{}"), timeout=2.0, max_output=100_000)
        assert isinstance(result, str) and time.monotonic() - started < 8, body
        result.encode("utf-8")
        assert len(result) < 110_000, body

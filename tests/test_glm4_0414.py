"""GLM-4-0414 and GLM-Z1-0414 (Glm4ForCausalLM, llama.cpp's `glm4`), the second family: tiny random checkpoints
of both sizes' shapes converted and checked against a numpy forward pass, the checkpoint's own tokenizer.json
and chat template carried over exactly, and the model chatting and serving, with a tool call and GLM-Z1's
reasoning apart from its answer."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import pexpect
import pytest
from helpers import factory
from helpers.cli import invoke, one_line_error
from helpers.glm4_0414 import Z1

from glm4_local.chat.setup import ModelFacts
from glm4_local.convert.pipeline import load_checkpoint
from glm4_local.core.errors import CheckpointError
from glm4_local.core.families.glm4 import GLM4_9B
from glm4_local.core.families.glm4_0414 import GLM4_0414
from glm4_local.core.families.registry import family_for_arch, family_for_config
from glm4_local.core.gguf.checks import open_gguf

# tiny shapes with the grouping of the two sizes: 9B has 32 query heads per 2 KV heads, 32B 48 per 8
SHAPES = {"9b": factory.Shape(n_head=8, n_head_kv=1, head_dim=32), "32b": factory.Shape(n_head=6, n_head_kv=1,
                                                                                            head_dim=32, n_layer=3)}
REAL_CONFIGS = {  # the published configs' numbers (../shared/glm4-reference/glm-z1-0414/README.md)
    "9b": {"hidden_size": 4096, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2,
           "intermediate_size": 13696},
    "32b": {"hidden_size": 6144, "num_hidden_layers": 61, "num_attention_heads": 48, "num_key_value_heads": 8,
            "intermediate_size": 23040},
}
@pytest.mark.parametrize("size", REAL_CONFIGS)
def test_the_published_configs_read_as_their_models(size: str) -> None:
    config = {"model_type": "glm4", "architectures": ["Glm4ForCausalLM"], "vocab_size": 151552, "head_dim": 128,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "attention_bias": True,
              "partial_rotary_factor": 0.5, "rope_theta": 10000.0, **REAL_CONFIGS[size]}
    assert family_for_config(config, "config.json") is GLM4_0414
    spec = GLM4_0414.spec_from_config(config, "config.json")
    assert (spec.n_head_kv, spec.head_dim, spec.rope_dim, spec.qkv_bias) == (config["num_key_value_heads"], 128, 64,
                                                                             True)
    assert spec.n_layer == config["num_hidden_layers"] and spec.n_ff == config["intermediate_size"]
    assert family_for_config({**config, "model_type": "glm"}, "config.json") is GLM4_9B  # GLM-4-9B-Chat-hf
    assert family_for_arch("glm4") is GLM4_0414 and family_for_arch("chatglm") is GLM4_9B


@pytest.mark.parametrize("size", SHAPES)
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_tiny_checkpoints_convert_and_verify(make_gguf: Callable[..., Path], make_checkpoint: Callable[..., Path],
                                            size: str, outtype: str) -> None:
    path = make_gguf(outtype, layout="glm4", shape=SHAPES[size])
    header = open_gguf(path)
    assert header.get(gguf.Keys.General.ARCHITECTURE) == "glm4"
    names = {t.name for t in header.tensors}
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight", "blk.0.attn_qkv.bias"} <= names
    result = invoke(["verify", str(path), "--source", str(make_checkpoint(layout="glm4", shape=SHAPES[size]))])
    assert result.exit_code == 0 and result.stdout.rstrip().endswith("OK"), result.stdout + result.stderr


def test_the_checkpoints_template_goes_in_byte_for_byte(make_gguf: Callable[..., Path],
                                                        make_checkpoint: Callable[..., Path]) -> None:
    for template in ("glm-4-0414", "glm-z1-0414"):
        folder = make_checkpoint(layout="glm4", template=template)
        facts = ModelFacts.read(make_gguf("f32", layout="glm4", template=template))
        assert facts.header.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) == (folder / "chat_template.jinja").read_text()
    z1 = (Path(__file__).parent / "data" / "glm-z1-0414-chat_template.jinja").read_bytes()
    assert len(z1) == 1292 and __import__("hashlib").sha256(z1).hexdigest().startswith("adee3acc")  # as published
    assert facts.template.reply_head == "\n<think>"  # GLM-Z1 opens its reply with its thoughts


@pytest.mark.parametrize(("change", "problem"), [
    (lambda t: t["model"].update(ignore_merges=False), "ignore_merges"),
    (lambda t: t["model"]["merges"].reverse(), "out of rank order"),
    (lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\s+"), "regex"),
    (lambda t: t.update(model={"type": "WordPiece"}), "not a BPE"),
])
def test_a_tokenizer_glm4_local_cannot_reproduce_exactly_is_refused(make_checkpoint: Callable[..., Path],
                                                                     tmp_path: Path, change: Callable,
                                                                     problem: str) -> None:
    import shutil

    folder = Path(shutil.copytree(make_checkpoint(layout="glm4"), tmp_path / "ckpt"))
    data = json.loads((folder / "tokenizer.json").read_text())
    change(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(str(folder))
    one_line_error(invoke(["convert", str(folder), "-o", str(tmp_path / "o.gguf")]), "tokenizer.json", problem)
    assert not (tmp_path / "o.gguf").exists()


def test_a_function_call_and_the_answer_after_its_result(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    from helpers import toolscripts

    model = make_gguf("f32", dtype="f32", layout="glm4", **toolscripts.gguf_fields("mcp"))
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]))
    program = tmp_path / "tool.py"
    program.write_text(f"#!{sys.executable}\nimport sys, json\njson.load(sys.stdin)\nprint('42')\n")
    program.chmod(0o755)
    result = invoke(["chat", str(model), "-p", "add them", "--json", "--tools", str(tools),
                     "--tool-exec", str(program)])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["tool_calls"][0]["function"] == {"name": "add", "arguments": toolscripts.ADD}
    assert answer["content"] == "Sunny day" and answer["steps"][0]["observations"][0]["content"] == "42\n"


def test_glm_z1_thinks_apart_from_its_answer(make_gguf: Callable[..., Path]) -> None:
    result = invoke(["chat", str(make_gguf("f32", dtype="f32", **Z1)), "-p", "hi", "--json"])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["content"], answer["reasoning_content"]) == ("Sunny day", "Hmm")


@pytest.mark.processes
def test_serve_calls_a_function_and_streams_glm_z1s_thoughts_apart(make_gguf: Callable[..., Path],
                                                                     tmp_path: Path) -> None:
    from helpers import toolscripts
    from helpers.serving import Server

    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    (tmp_path / "a").mkdir()
    (tmp_path / "z1").mkdir()
    server = Server(make_gguf("f32", dtype="f32", layout="glm4", **toolscripts.gguf_fields("mcp")), tmp_path / "a")
    try:
        client = server.client()
        ask = [{"role": "user", "content": "add"}]
        reply = client.chat.completions.create(model="m", messages=ask, tools=tools)
        [call] = reply.choices[0].message.tool_calls
        assert (reply.choices[0].finish_reason, call.function.name, call.function.arguments) == (
            "tool_calls", "add", toolscripts.ADD)
        follow = [*ask, reply.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "42"}]
        assert client.chat.completions.create(model="m", messages=follow, tools=tools).choices[0].message.content == \
            "Sunny day"
        status, body = server.json("POST", "/v1/chat/completions", {"messages": ask, "tools": [{"type": "python"}]})
        assert status == 400 and "'python' is not a tool this model was trained with" in body["error"]["message"]
    finally:
        server.stop()
    server = Server(make_gguf("f32", dtype="f32", **Z1), tmp_path / "z1")
    try:
        client = server.client()
        ask = [{"role": "user", "content": "hi"}]
        whole = client.chat.completions.create(model="m", messages=ask)
        message = whole.choices[0].message
        assert (message.content, message.model_extra["reasoning_content"]) == ("Sunny day", "Hmm")
        assert whole.usage.completion_tokens_details.reasoning_tokens == 4  # Hmm, </, think, >\n
        chunks = [c.choices[0].delta for c in client.chat.completions.create(model="m", messages=ask, stream=True)
                  if c.choices]
        assert "".join(d.model_extra.get("reasoning_content") or "" for d in chunks) == "Hmm"
        assert "".join(d.content or "" for d in chunks) == "Sunny day"
        response = client.responses.create(model="m", input="hi")
        assert [item.type for item in response.output] == ["reasoning", "message"]
        assert response.output[0].content[0].text == "Hmm" and response.output_text == "Sunny day"
        assert response.usage.output_tokens_details.reasoning_tokens == 4
        events = [e.type for e in client.responses.create(model="m", input="hi", stream=True)]
        assert events.index("response.reasoning_text.delta") < events.index("response.output_text.delta")
        # thoughts are never fed back: the next prompt is the same with or without them
        again = [{"role": "assistant", "content": "Sunny day"}, {"role": "user", "content": "and?"}]
        kept = [{"role": "assistant", "content": "Sunny day", "reasoning_content": "Hmm " * 50},
                {"role": "user", "content": "and?"}]
        used = [client.chat.completions.create(model="m", messages=[*ask, *m], max_tokens=1).usage.prompt_tokens
                for m in (again, kept)]
        assert used[0] == used[1]
    finally:
        server.stop()


@pytest.mark.processes
def test_glm_z1s_thoughts_show_dimmed_in_the_terminal(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    from helpers.terminal import chat, saved

    term = chat(make_gguf("f32", dtype="f32", **Z1), tmp_path)
    term.send("hi\r")
    term.wait_for("Sunny day")
    screen = term.text()
    assert screen.index("Hmm") < screen.index("Sunny day")
    assert "\x1b[2mHmm" in term.raw  # dimmed (SGR 2), apart from the answer
    term.send("/exit\r")
    term.child.expect(pexpect.EOF)  # autosaved as it ends
    assert saved(tmp_path)[-1] == {"role": "assistant", "content": "Sunny day", "reasoning_content": "Hmm"}


def test_community_ggufs_of_0414_models_are_flagged_and_repaired(make_gguf: Callable[..., Path],
                                                                  make_checkpoint: Callable[..., Path],
                                                                  tmp_path: Path) -> None:
    """As they are on the Hub: `chatglm-bpe`, the end-of-sequence id of <|user|>, GLM-4-9B-Chat's template."""
    from glm4_local.core.gguf.checks import open_gguf as read
    from glm4_local.gguf_tools.rewrite import Field, fields_of, rewrite_gguf

    K, V = gguf.Keys, gguf.GGUFValueType
    ours = make_gguf("q8_0", layout="glm4", template="glm-z1-0414")
    plain = factory.write_community_gguf(ours, tmp_path / "plain.gguf")
    header = read(plain)
    fields = fields_of(header)
    fields[K.Tokenizer.EOS_ID] = Field(header.get(K.Tokenizer.LIST).index("<|user|>"), V.UINT32)
    fields[K.Tokenizer.CHAT_TEMPLATE] = Field(GLM4_9B.published_template, V.STRING)
    theirs = tmp_path / "community.gguf"
    rewrite_gguf(plain, header, theirs, fields)
    info = invoke(["info", str(theirs)])
    for problem in ("pre-tokenizer 'chatglm-bpe'", "end-of-sequence id", "is <|user|>, not <|endoftext|>",
                    "chat template is GLM-4-9B's, not this model's"):
        assert problem in info.stderr, info.stderr
    template = make_checkpoint(layout="glm4", template="glm-z1-0414") / "chat_template.jinja"
    result = invoke(["repair", str(theirs), "--template", str(template)])
    assert result.exit_code == 0, result.stderr
    fixed = read(tmp_path / "community-repaired.gguf")
    for key in (K.Tokenizer.PRE, K.Tokenizer.MERGES, K.Tokenizer.EOS_ID, K.Tokenizer.EOM_ID, K.Tokenizer.CHAT_TEMPLATE):
        assert fixed.get(key) == read(ours).get(key), key
    assert "tokenizer check: all" in result.stderr
    assert invoke(["info", str(tmp_path / "community-repaired.gguf")]).stderr == ""
    # with no template at all, and none published for the family: one line saying how to give one
    one_line_error(invoke(["repair", str(plain), "-o", str(tmp_path / "x.gguf")]), "no chat template",
                   "--template")
    one_line_error(invoke(["chat", str(plain), "-p", "hi"]), "no chat template", "--template")


@pytest.mark.parametrize(("prompted", "generated", "reasoning", "streamed", "call"), [
    ("\n<think>", "Let me think</think>\nIt is 42.", "Let me think", "It is 42.", None),  # GLM-Z1 reasoning
    ("\n<think>", "Hm</think>add\n{\"a\": 1}", "Hm", "", ("add", '{"a": 1}')),  # then a call
    ("\n<think></think>add\n", '{"a": 1}', "", "", ("add", '{"a": 1}')),  # tool_choice: thoughts closed first
    ("\n<think></think>", '\n{"x": 1}', "", '{"x": 1}', None),  # response_format: the same
    ("", "\nIt is <think>42</think>.", "", "It is <think>42</think>.", None),  # GLM-4-9B-0414: no reasoning
    ("\n<think>", "cut off while thin", "cut off while thin", "", None),
])
def test_the_reply_format_reads_thoughts_apart(prompted: str, generated: str, reasoning: str, streamed: str,
                                               call: tuple[str, str] | None) -> None:
    replies = GLM4_0414.replies
    tools = [{"type": "function", "function": {"name": "add"}}]
    stream = replies.stream(tools, prompted)
    shown, thought = "", ""
    for i in range(0, len(generated), 3):  # in pieces that split "</think>"
        shown += stream.feed(generated[i:i + 3])
        thought += stream.take_reasoning()
    shown += stream.end()
    thought += stream.take_reasoning()
    reply = replies.finish(prompted + generated, tools, True, prompted)
    assert (thought, reply.reasoning) == (reasoning, reasoning)
    assert shown == streamed  # a call is held whole, never shown as text
    assert (reply.tool_call.name, reply.tool_call.arguments) == call if call else reply.tool_call is None
    assert replies.skip_reasoning("\n<think>") == "</think>" and replies.skip_reasoning("") == ""

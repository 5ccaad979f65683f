"""What a GLM-4-0414 checkpoint holds besides GLM-4-9B-Chat-hf's: Glm4ForCausalLM's config, the two extra
norms per layer, a Hugging Face tokenizer.json (written as transformers' TikTokenConverter writes one
from tiktoken ranks; tests/test_glm4_0414.py checks it is the same file), and a chat template.

GLM-Z1-0414's template is the published one (tests/data); GLM-4-9B-0414's is not available here, so
TEMPLATE is the tests' own in the same style: Z1's without the reasoning and the self-introduction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from glm4_local.core.families.glm4 import PATTERN
from glm4_local.core.gguf.bpe import byte_to_unicode

Z1_TEMPLATE = (Path(__file__).parents[1] / "data" / "glm-z1-0414-chat_template.jinja").read_text(encoding="utf-8")
TEMPLATE = """[gMASK]<sop>
{%- if tools -%}
<|system|>
# 可用工具
{%- for tool in tools %}
    {%- set function = tool.function if tool.get("function") else tool %}

## {{ function.name }}

{{ function | tojson(indent=4, ensure_ascii=False) }}
在调用上述函数时，请使用 Json 格式表示调用的参数。
{%- endfor %}
{%- endif -%}
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- endif %}
{%- endfor %}
{%- for message in messages if message.role != 'system' %}
    {%- set role = message['role'] %}
    {%- set content = message['content'] %}
    {%- set meta = message.get("metadata", "") %}
    {%- if role == 'user' %}
<|user|>
{{ content }}
    {%- elif role == 'assistant' and not meta %}
<|assistant|>
{{ content }}
    {%- elif role == 'assistant' and meta %}
<|assistant|>{{ meta }}
{{ content }}
    {%- elif role == 'observation' %}
<|observation|>
{{ content }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>{% endif %}"""
TEMPLATES = {"glm-4-0414": TEMPLATE, "glm-z1-0414": Z1_TEMPLATE}
# make_gguf's fields for a scripted GLM-Z1: the prompt ends "<think>", the model thinks "Hmm", closes its
# thoughts and answers "Sunny day" (each word one token; ">\n" ends "</think>" as one pre-token)
Z1 = {"layout": "glm4", "extra_tokens": (">\n", "Hmm", "</", "think", "Sunny", " day"), "template": "glm-z1-0414",
      "script": ((">", "Hmm"), ("Hmm", "</"), ("</", "think"), ("think", ">\n"), (">\n", "Sunny"),
                 ("Sunny", " day"), (" day", "<|user|>"))}


# Glm4ForCausalLM's config.json: GLM-4-9B-Chat-hf's (factory.glm_config) with these changes
CONFIG_CHANGES = {"architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "rms_norm_eps": 1e-05,
                  "attention_dropout": 0.0}


def with_post_norms(weights: dict[str, np.ndarray], n_layer: int, n_embd: int, seed: int) -> dict[str, np.ndarray]:
    """GLM-4-9B-Chat-hf's weights plus the two norms of each 0414 layer (their own generator, so the other
    weights are the very numbers the GLM-4 layouts hold)."""
    rng = np.random.default_rng(seed + 4140)
    out = dict(weights)
    for i in range(n_layer):
        for name in ("post_self_attn_layernorm", "post_mlp_layernorm"):
            out[f"model.layers.{i}.{name}.weight"] = (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)
    return out


def _text(token: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in token)


def tokenizer_json(tokens: list[bytes], specials: dict[int, str]) -> dict:
    """A tokenizer.json for tiktoken-style ranks (`tokens` in rank order) and special tokens by id."""
    table = byte_to_unicode()
    ranks = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, rank in ranks.items():  # every split into two tokens, as TikTokenConverter lists them
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[a], ranks[b], a, b) for a, b in local]
    merges.sort(key=lambda m: m[:3])
    added = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, text in sorted(specials.items())]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {_text(t, table): i for t, i in ranks.items()},
                  "merges": [[_text(a, table), _text(b, table)] for *_, a, b in merges]},
    }


def tokenizer_config(specials: dict[int, str]) -> dict:
    """tokenizer_config.json as transformers saves a fast tokenizer's (the template in its own file)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False, "do_lower_case": False, "model_max_length": 128000,
            "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in specials.items()}}


def write_files(folder: Path, tokens: list[bytes], specials: dict[int, str], template: str) -> None:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja (where transformers saves a template)."""
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(tokens, specials), ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(specials), ensure_ascii=False))
    (folder / "chat_template.jinja").write_text(TEMPLATES[template], encoding="utf-8")

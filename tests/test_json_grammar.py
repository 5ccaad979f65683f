"""Constrained JSON: every output of a grammar made from a schema parses and validates against it (a random
model sampling at temperature 1, many seeds); what cannot be enforced is refused, naming the keyword."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers.schemas import random_schema

from glm4_local.chat.constraints import ConstraintError, answer_grammar
from glm4_local.chat.json_grammar import MAX_REPEAT, SchemaUnsupported, integer_range, schema_rules
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import ChatRuntime
from glm4_local.chat.setup import ModelFacts, load_runtime
from glm4_local.core.families.glm4_replies import GLM4_REPLIES
from glm4_local.core.llama.decoder import Job
from glm4_local.core.llama.sampling import SamplerSettings, grammar_problem

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 1, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b\"c", "d\\e", "é\n"]}, "maxItems": 3},
        "score": {"type": "number", "minimum": 0},
        "ok": {"type": ["boolean", "null"]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, Any] = {
    "person": PERSON,
    "top-level integer": {"type": "integer"},
    "negative range": {"type": "integer", "minimum": -1234, "maximum": -7},
    "exclusive range": {"type": "integer", "exclusiveMinimum": 99, "exclusiveMaximum": 1001},
    "top-level string": {"type": "string", "maxLength": 20},
    "odd property names": {"type": "object", "properties": {'say "hi"': {"type": "boolean"},
                                                           "back\\slash": {"type": "null"},
                                                           "new\nline": {"const": 3}},
                           "required": ['say "hi"', "back\\slash", "new\nline"]},
    "only optional": {"type": "object", "properties": {"x": {"type": "integer", "maximum": 5},
                                                       "y": {"type": "boolean"}, "z": {"const": "z"}}},
    "tuple": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": 3}, {"type": "null"}],
              "items": False},
    "counted": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4},
    "refs": {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer", "minimum": 0,
                                                                      "maximum": 9},
                                                                "next": {"anyOf": [{"$ref": "#/$defs/node"},
                                                                                   {"type": "null"}]}},
                                "required": ["v"]}},
             "$ref": "#/$defs/node"},
    "formats": {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                                 "id": {"type": "string", "format": "uuid"}},
                "required": ["when", "id"]},
    "map": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 1}},
    "any object": {"type": "object"},
    "pydantic-style": {"title": "Answer", "type": "object", "$defs": {"Kind": {"enum": ["x", "y"], "type": "string"}},
                       "properties": {"kind": {"$ref": "#/$defs/Kind", "description": "which"},
                                      "note": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}],
                                               "default": None}},
                       "required": ["kind"]},
}


@pytest.fixture(scope="module")
def runtime(make_gguf: Callable[..., Path]) -> Iterator[ChatRuntime]:
    rt = load_runtime(ModelFacts.read(make_gguf("f32")), RuntimeOptions(ctx=4096, threads=2), slots=4)
    yield rt
    rt.decoder.close()


def generate(rt: ChatRuntime, grammar: str, seeds: range, max_tokens: int = 400) -> list[Job]:
    jobs = [Job([11, 12, 13 + seed % 50], SamplerSettings(temperature=1.0, seed=seed, grammar=grammar), max_tokens,
                frozenset(rt.vocab.stop_ids)) for seed in seeds]
    for job in jobs:
        rt.decoder.submit(job)
    while rt.decoder.has_work():
        rt.decoder.step()
    return jobs


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_finished_output_is_valid_json_for_its_schema(runtime: ChatRuntime, name: str) -> None:
    schema = SCHEMAS[name]
    grammar = answer_grammar(GLM4_REPLIES, schema)
    assert grammar_problem(runtime.vocab.model.vocab, grammar) is None
    jobs = generate(runtime, grammar, range(24))
    finished = [j for j in jobs if j.finish == "stop"]  # the others ran out of tokens (whitespace, deep nesting)
    assert len(finished) >= 8, f"only {len(finished)} of 24 outputs finished"
    for job in finished:
        text_of = runtime.vocab.detokenizer()
        text = "".join(text_of(t) for t in job.generated)
        assert text.startswith("\n")
        jsonschema.validate(json.loads(text), schema)


def test_integer_ranges_hold_every_value_and_nothing_else() -> None:
    """The digit-range grammar, checked exhaustively against Python's own range over small windows."""
    import re

    def as_regex(expression: str) -> str:  # this grammar's digit rules read as a regex once spaces and quotes go
        return expression.replace('"', "").replace(" ", "")

    rng = random.Random(5)
    for _ in range(60):
        lo = rng.randrange(-3000, 3000)
        hi = lo + rng.randrange(0, 2500)
        pattern = re.compile(as_regex(integer_range(lo, hi)))
        for n in range(lo - 50, hi + 51):
            assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), (lo, hi, n)


@pytest.mark.parametrize(("schema", "keyword"), [
    ({"type": "array", "items": {"type": "string"}, "maxItems": 100000}, "maxItems"),
    ({"type": "string", "maxLength": 100000}, "maxLength"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, "pattern"),
    ({"type": "string", "format": "email"}, "format"),
    ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "oneOf"),
    ({"type": "number", "maximum": 3.5}, "maximum"),
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"$ref": "https://example.com/schema.json"}, "$ref"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}, "required"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "bounds"),
    ({"type": "tensor"}, "type"),
    ({"$ref": "#"}, "refers to itself"),
    ({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}, "$ref": "#/$defs/a"}, "refers to itself"),
])
def test_what_cannot_be_enforced_is_refused_by_name(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(ConstraintError, match=keyword.replace("$", r"\$")):
        answer_grammar(GLM4_REPLIES, schema)


def test_deep_and_wide_schemas_are_bounded() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaUnsupported, match="nested more than"):
        schema_rules({"root": deep})
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer", "minimum": i, "maximum": 10**12 + i}
                                             for i in range(3000)}}
    with pytest.raises(SchemaUnsupported, match="more than"):
        schema_rules({"root": wide})
    at_limit = {"type": "array", "items": {"type": "string", "maxLength": MAX_REPEAT}, "maxItems": MAX_REPEAT}
    assert "{0,4095}" in schema_rules({"root": at_limit})





def test_fuzzed_schemas_become_a_grammar_llama_cpp_parses_or_a_clear_refusal(runtime: ChatRuntime) -> None:
    """Every generated schema is answered: a grammar llama.cpp accepts, or a refusal naming why. Never a
    crash (llama.cpp's parser used to overflow its stack on schemas such as maxItems 100000)."""
    rng = random.Random(15)
    made = refused = 0
    for _ in range(300):
        schema = random_schema(rng)
        try:
            grammar = answer_grammar(GLM4_REPLIES, schema)
        except ConstraintError as e:
            assert "cannot hold the output" in str(e)
            refused += 1
            continue
        assert grammar_problem(runtime.vocab.model.vocab, grammar) is None, json.dumps(schema)
        made += 1
    assert made > 100 and refused > 30


def test_a_refused_grammar_is_one_bounded_line_not_megabytes_on_stderr(runtime: ChatRuntime,
                                                                        capfd: pytest.CaptureFixture[str]) -> None:
    huge = 'root ::= "a" ' + " ".join(f'"{i}"' for i in range(50000)) + " bogus{"
    problem = grammar_problem(runtime.vocab.model.vocab, huge)
    assert problem is not None and "could not parse" in problem and len(problem) < 400
    assert len(capfd.readouterr().err) < 400

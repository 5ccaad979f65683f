"""JSON Schema to a llama.cpp grammar (GBNF) whose every output parses as JSON and validates.

Written here rather than taken from llama-cpp-python's converter, which lets control characters into
strings, ignores integer bounds, breaks on top-level primitives and on property names with quotes, and
expands `maxItems: 100000` into 100,000 nested groups that overflow llama.cpp's parser stack. This one
covers a stated subset of JSON Schema and refuses everything else with SchemaUnsupported naming the
keyword and where it is; every repetition it writes is bounded, and so is the whole grammar.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_REPEAT = 4096  # largest minItems/maxItems/minLength/maxLength
MAX_DEPTH = 32  # schemas nested deeper are refused
MAX_RULES = 2048
MAX_GRAMMAR_CHARS = 512 * 1024
MAX_DIGITS = 16  # integers and number parts: JS-safe, and no endless digit runs from a wandering model
# keywords that only describe (they never change which values are valid)
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})
FORMATS = {  # formats this grammar enforces; any other is refused
    "date": r'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )',
    "time": r'( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
            r'( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
    "uuid": r'[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}',
}
FORMATS["date-time"] = f'{FORMATS["date"]} "T" {FORMATS["time"]}'
PRIMITIVES = {
    "ws": '| " " | "\\n" [ \\t]{0,20}',
    # not llama.cpp's whole decoded range: no controls, no surrogates, nothing past U+10FFFF (bytes such as
    # 0xFF, which llama.cpp reads as the lead of a 4-byte character and Python's decoder refuses)
    "char": '[^"\\\\\\x00-\\x1F\\x7F\\uD800-\\uDFFF\\U00110000-\\U003FFFFF] '
            '| "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
    "string": '"\\"" char* "\\"" ws',
    "integer": f'"-"? ( "0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}} ) ws',
    "fraction": f'( "." [0-9]{{1,{MAX_DIGITS}}} )? ( [eE] [-+]? [0-9]{{1,3}} )?',
    "number": f'"-"? ( "0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}} ) fraction ws',
    "boolean": '( "true" | "false" ) ws',
    "null": '"null" ws',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws',
    "array": '"[" ws ( value ( "," ws value )* )? "]" ws',
}
_DEPENDS = {"string": ("char", "ws"), "integer": ("ws",), "number": ("fraction", "ws"), "boolean": ("ws",),
            "null": ("ws",), "value": ("object", "array", "string", "number", "boolean", "null"),
            "object": ("ws", "string", "value"), "array": ("ws", "value")}


class SchemaUnsupported(ValueError):
    """A schema this grammar cannot hold output to; the message names the keyword and its place."""


def literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    escaped = "".join(f"\\x{ord(c):02X}" if ord(c) < 0x20 or c == "\x7f" else "\\" + c if c in '"\\' else c
                      for c in text)
    return f'"{escaped}"'


def _digits_between(lo: str, hi: str) -> str:
    """Digit strings of one length from lo to hi (inclusive, lo <= hi)."""
    if not lo:
        return ""
    if lo == hi:
        return literal(lo)
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return f"[{lo[0]}-{hi[0]}]" + (f" [0-9]{{{rest}}}" if rest else "")
    if lo[0] == hi[0]:
        return f"{literal(lo[0])} ( {_digits_between(lo[1:], hi[1:])} )"
    options = [f"{literal(lo[0])} ( {_digits_between(lo[1:], '9' * rest)} )"]
    if int(hi[0]) - int(lo[0]) > 1:
        options.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}] [0-9]{{{rest}}}")
    options.append(f"{literal(hi[0])} ( {_digits_between('0' * rest, hi[1:])} )")
    return " | ".join(options)


def _naturals(lo: int, hi: int) -> str:
    """Whole numbers lo..hi (0 <= lo <= hi), without leading zeros."""
    options = []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (length - 1) if length > 1 else 0), min(hi, 10**length - 1)
        if a <= b:
            options.append(f"( {_digits_between(str(a), str(b))} )")
    return " | ".join(options)


def integer_range(lo: int | None, hi: int | None) -> str:
    """GBNF for the JSON integers lo..hi (None: no bound, within MAX_DIGITS digits)."""
    biggest = 10**MAX_DIGITS - 1
    lo, hi = max(lo if lo is not None else -biggest, -biggest), min(hi if hi is not None else biggest, biggest)
    options = []
    if lo < 0:
        options.append(f'"-" ( {_naturals(max(1, -hi), -lo)} )' if hi < 0 else f'"-" ( {_naturals(1, -lo)} )')
    if hi >= 0:
        options.append(_naturals(max(lo, 0), hi))
    return " | ".join(options)


class GrammarBuilder:
    """Rules for one or more named schemas; `grammar()` is the text, without a root rule."""

    def __init__(self) -> None:
        self.root_schema: Any = {}  # the schema being added, which its local references point into
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}  # "#/$defs/x" -> its rule name
        self.unguarded: list[str] = []  # references being expanded since the last "{" or "[" (left recursion)

    def add(self, name: str, schema: Any) -> str:
        """A rule called `name` for `schema`; returns the name."""
        self.root_schema, self.refs = schema, {}
        self._define(name, self.expression(schema, "$", 0))
        return name

    def grammar(self) -> str:
        text = "".join(f"{name} ::= {body}\n" for name, body in self.rules.items())
        if len(text) > MAX_GRAMMAR_CHARS:
            raise SchemaUnsupported(f"the schema makes a grammar larger than {MAX_GRAMMAR_CHARS // 1024} KiB")
        return text

    # -- rules ------------------------------------------------------------------------------------
    def _define(self, name: str, body: str) -> None:
        if len(self.rules) >= MAX_RULES:
            raise SchemaUnsupported(f"the schema needs more than {MAX_RULES} grammar rules")
        self.rules[name] = body

    def _fresh(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", hint).strip("-").lower()[:40] or "rule"
        name, n = base, 1
        while name in self.rules or name in PRIMITIVES:
            n += 1
            name = f"{base}-{n}"
        return name

    def _primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for needed in _DEPENDS.get(name, ()):
                self._primitive(needed)
        return name

    # -- schemas ----------------------------------------------------------------------------------
    def expression(self, schema: Any, where: str, depth: int) -> str:
        """A GBNF expression for the JSON values `schema` allows, with trailing whitespace."""
        if depth > MAX_DEPTH:
            raise SchemaUnsupported(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if schema is True or schema == {}:
            return self._primitive("value")
        if not isinstance(schema, dict):
            raise SchemaUnsupported(f"{where}: a schema must be an object" + (" (false allows nothing)"
                                                                             if schema is False else ""))
        for key in ("$ref", "anyOf", "allOf", "enum", "const"):
            if key in schema:
                return self._combinator(key, schema, where, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or not all(isinstance(k, str) for k in kind):
                raise SchemaUnsupported(f"{where}.type: a list of type names is needed")
            return " | ".join(f"( {self._typed(k, schema, where, depth)} )" for k in dict.fromkeys(kind))
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            self._only(schema, set(), where)
            return self._primitive("value")
        return self._typed(kind, schema, where, depth)

    def _only(self, schema: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in schema:
            if key not in allowed and key not in ANNOTATIONS and key != "type":
                raise SchemaUnsupported(f"{where}: the keyword {key!r} cannot be enforced here")

    def _combinator(self, key: str, schema: Mapping[str, Any], where: str, depth: int) -> str:
        self._only(schema, {key}, where)
        value = schema[key]
        if key == "$ref":
            return self._ref(value, f"{where}.$ref")
        if key == "const":
            return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) + " " + self._primitive("ws")
        if key == "enum":
            if not isinstance(value, list) or not value:
                raise SchemaUnsupported(f"{where}.enum: a non-empty list is needed")
            ws = self._primitive("ws")
            options = dict.fromkeys(literal(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in value)
            return "( " + " | ".join(options) + f" ) {ws}"
        if not isinstance(value, list) or not value:
            raise SchemaUnsupported(f"{where}.{key}: a non-empty list of schemas is needed")
        if key == "allOf":
            if len(value) != 1:
                raise SchemaUnsupported(f"{where}.allOf: only a single schema can be enforced")
            return self.expression(value[0], f"{where}.allOf[0]", depth + 1)
        return " | ".join(f"( {self.expression(s, f'{where}.anyOf[{i}]', depth + 1)} )" for i, s in enumerate(value))

    def _ref(self, ref: Any, where: str) -> str:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith(("#/$defs/", "#/definitions/"))):
            raise SchemaUnsupported(f"{where}: only local references (#/$defs/..., #/definitions/...) are followed")
        if ref in self.unguarded:
            raise SchemaUnsupported(f"{where}: {ref} refers to itself with no object or array around it")
        if ref not in self.refs:
            target = self.root_schema
            for part in ref[2:].split("/") if ref != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise SchemaUnsupported(f"{where}: {ref} is not defined in the schema")
                target = target[part]
            name = self.refs[ref] = self._fresh("ref-" + ref.rsplit("/", 1)[-1])
            self.rules[name] = ""  # reserved: a schema may refer to itself inside an object or array
            self.unguarded.append(ref)
            try:
                self.rules[name] = self.expression(target, ref, 1)
            finally:
                self.unguarded.remove(ref)
        return self.refs[ref]

    def _typed(self, kind: str, schema: Mapping[str, Any], where: str, depth: int) -> str:
        if kind in ("boolean", "null"):
            self._only(schema, set(), where)
            return self._primitive(kind)
        if kind == "integer":
            self._only(schema, {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}, where)
            return self._integer(schema, where)
        if kind == "number":
            self._only(schema, {"minimum"}, where)
            return self._number(schema, where)
        if kind == "string":
            self._only(schema, {"minLength", "maxLength", "format"}, where)
            return self._string(schema, where)
        if kind in ("array", "object"):
            allowed = {"items", "prefixItems", "minItems", "maxItems"} if kind == "array" else \
                {"properties", "required", "additionalProperties"}
            self._only(schema, allowed, where)
            guarded, self.unguarded = self.unguarded, []  # what follows "[" or "{" may refer back
            try:
                return self._array(schema, where, depth) if kind == "array" else self._object(schema, where, depth)
            finally:
                self.unguarded = guarded
        raise SchemaUnsupported(f"{where}.type: unknown type {kind!r}")

    def _integer(self, schema: Mapping[str, Any], where: str) -> str:
        bounds = {k: schema[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema}
        if not bounds:
            return self._primitive("integer")
        for key, value in bounds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SchemaUnsupported(f"{where}.{key}: a number is needed")
        lows = [math.ceil(bounds["minimum"])] if "minimum" in bounds else []
        lows += [math.floor(bounds["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in bounds else []
        highs = [math.floor(bounds["maximum"])] if "maximum" in bounds else []
        highs += [math.ceil(bounds["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in bounds else []
        lo, hi = max(lows, default=None), min(highs, default=None)
        if lo is not None and hi is not None and lo > hi:
            raise SchemaUnsupported(f"{where}: no integer lies between its bounds")
        name = self._fresh(f"int-{lo}-{hi}")
        self._define(name, f"( {integer_range(lo, hi)} ) {self._primitive('ws')}")
        return name

    def _number(self, schema: Mapping[str, Any], where: str) -> str:
        if "minimum" not in schema:
            return self._primitive("number")
        if schema["minimum"] != 0 or isinstance(schema["minimum"], bool):
            raise SchemaUnsupported(f"{where}.minimum: only 0 can be enforced on a non-integer number")
        self._primitive("number")
        return f'( "0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}} ) fraction ws'

    def _count(self, schema: Mapping[str, Any], low: str, high: str, where: str) -> tuple[int, int | None]:
        counts = []
        for key in (low, high):
            value = schema.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise SchemaUnsupported(f"{where}.{key}: a whole number is needed")
            if value is not None and value > MAX_REPEAT:
                raise SchemaUnsupported(f"{where}.{key}: {value} is more than the {MAX_REPEAT:,} a grammar may repeat")
            counts.append(value)
        lo, hi = counts[0] or 0, counts[1]
        if hi is not None and hi < lo:
            raise SchemaUnsupported(f"{where}: {high} is below {low}")
        return lo, hi

    def _string(self, schema: Mapping[str, Any], where: str) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in FORMATS:
                raise SchemaUnsupported(f"{where}.format: {fmt!r} cannot be enforced (known: {', '.join(FORMATS)})")
            if "minLength" in schema or "maxLength" in schema:
                raise SchemaUnsupported(f"{where}: lengths cannot be enforced together with a format")
            return f'"\\"" {FORMATS[fmt]} "\\"" {self._primitive("ws")}'
        lo, hi = self._count(schema, "minLength", "maxLength", where)
        if lo == 0 and hi is None:
            return self._primitive("string")
        self._primitive("string")
        return f'"\\"" char{{{lo},{"" if hi is None else hi}}} "\\"" ws'

    def _array(self, schema: Mapping[str, Any], where: str, depth: int) -> str:
        lo, hi = self._count(schema, "minItems", "maxItems", where)
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise SchemaUnsupported(f"{where}.prefixItems: a list of schemas is needed")
        items = schema.get("items", True)
        first = [self.expression(s, f"{where}.prefixItems[{i}]", depth + 1) for i, s in enumerate(prefix)]
        more = None if items is False else self.expression(items, f"{where}.items", depth + 1)
        ws = self._primitive("ws")
        if prefix and ((lo > len(prefix) and more is None) or (hi is not None and hi < len(prefix))):
            raise SchemaUnsupported(f"{where}: minItems/maxItems contradict prefixItems")
        if prefix:  # the tuple's items in full, then as many more as allowed
            body = ' "," ws '.join(f"( {e} )" for e in first)
            extra_lo, extra_hi = max(0, lo - len(prefix)), None if hi is None else hi - len(prefix)
            if more is not None and extra_hi != 0:
                body += f' ( "," ws ( {more} ) ){{{extra_lo},{"" if extra_hi is None else extra_hi}}}'
            return f'"[" {ws} {body} "]" {ws}'
        if more is None:
            return f'"[" {ws} "]" {ws}'
        item = self._fresh("item")
        self._define(item, more)
        if hi == 0:
            return f'"[" {ws} "]" {ws}'
        tail = f'( "," ws {item} ){{{max(lo - 1, 0)},{"" if hi is None else hi - 1}}}'
        body = f"{item} {tail}"
        return f'"[" {ws} {body if lo else f"( {body} )?"} "]" {ws}'

    def _object(self, schema: Mapping[str, Any], where: str, depth: int) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise SchemaUnsupported(f"{where}: properties must be an object and required a list")
        missing = [r for r in required if r not in properties]
        if missing:
            raise SchemaUnsupported(f"{where}.required: {missing[0]!r} has no schema in properties")
        extra = schema.get("additionalProperties", True)
        if not properties:
            if extra is False:
                return f'"{{" {self._primitive("ws")} "}}" ws'
            if extra is True or extra == {}:
                return self._primitive("object")
            value = self.expression(extra, f"{where}.additionalProperties", depth + 1)
            name = self._fresh("entry")
            self._define(name, f'{self._primitive("string")} ":" ws ( {value} )')
            return f'"{{" ws ( {name} ( "," ws {name} )* )? "}}" ws'
        ws = self._primitive("ws")
        pairs = {}
        for key, sub in properties.items():
            value = self.expression(sub, f"{where}.properties[{json.dumps(key)}]", depth + 1)
            name = self._fresh(f"{key}-kv")
            self._define(name, f'{literal(json.dumps(key, ensure_ascii=False))} {ws} ":" {ws} ( {value} )')
            pairs[key] = name
        needed = [pairs[k] for k in properties if k in required]
        optional = [pairs[k] for k in properties if k not in required]
        if needed:
            body = ' "," ws '.join(needed) + "".join(f' ( "," ws {o} )?' for o in optional)
            return f'"{{" {ws} {body} "}}" {ws}'
        comma = '"," ws'
        tails = [o + "".join(f" ( {comma} {later} )?" for later in optional[i + 1:]) for i, o in enumerate(optional)]
        choices = " | ".join(f"( {t} )" for t in tails)
        return f'"{{" {ws} ( {choices} )? "}}" {ws}'


def schema_rules(schemas: Mapping[str, Any]) -> str:
    """GBNF rules, one per named schema (rule name = key); SchemaUnsupported for what it cannot hold to."""
    builder = GrammarBuilder()
    for name, schema in schemas.items():
        builder.add(name, schema)
    return builder.grammar()

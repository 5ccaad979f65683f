"""Random JSON schemas, for the grammar's and the server's fuzz tests."""

from __future__ import annotations

import random
from typing import Any


def random_schema(rng: random.Random, depth: int = 0) -> Any:
    """A schema from the whole space a client might send: sizes, nesting, counts, patterns, odd names."""
    kind = rng.choice(["object", "array", "string", "integer", "number", "boolean", "null", "enum", "anyOf",
                       "pattern", "ref"] if depth < 6 else ["string", "integer", "boolean"])
    big = rng.choice([0, 1, 3, 50, 4096, 4097, 100000, 10**9])
    if kind == "object":
        names = [rng.choice(["a", 'q"', "b\\", "n\nl", "é", "", " "]) + str(i) for i in range(rng.randrange(0, 5))]
        props = {n: random_schema(rng, depth + 1) for n in names}
        return {"type": "object", "properties": props, "required": rng.sample(names, rng.randrange(0, len(names) + 1)),
                **({"additionalProperties": rng.choice([False, True, {"type": "integer"}])} if rng.random() < .5
                   else {})}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": big,
                **({"minItems": rng.choice([0, 1, 2, big])} if rng.random() < .3 else {})}
    if kind == "string":
        return {"type": "string", **({"maxLength": big} if rng.random() < .5 else {}),
                **({"format": rng.choice(["date", "uuid", "email"])} if rng.random() < .2 else {})}
    if kind == "integer":
        bounds = {k: rng.randrange(-10**rng.randrange(1, 20), 10**rng.randrange(1, 20))
                  for k in ("minimum", "maximum", "exclusiveMinimum") if rng.random() < .4}
        return {"type": "integer", **bounds}
    if kind == "pattern":
        return {"type": "string", "pattern": f"^a{{0,{big}}}$"}
    if kind == "enum":
        return {"enum": [rng.choice([1, "x", None, True, [1, 2], {"k": "v"}, 'q"\n']) for _ in range(3)]}
    if kind == "anyOf":
        return {"anyOf": [random_schema(rng, depth + 1) for _ in range(rng.randrange(1, 4))]}
    if kind == "ref":
        return {"$ref": rng.choice(["#", "#/$defs/none", "http://x/y"])}
    return {"type": kind}

"""JSON Schemas as llama.cpp grammars (GBNF): what constrains a structured reply's sampling, token by token, so that
it always parses and validates, or the schema is refused before anything is generated.

llama-cpp-python's converter (a port of llama.cpp's json-schema-to-grammar) enforces part of JSON Schema and
silently ignores the rest (`minimum`, `not`, `uniqueItems`, ...): a reply would then be constrained to JSON that need
not validate. So a schema is first checked against the keywords the converter enforces; any other keyword, a `$ref`
that does not resolve within the schema (nothing is ever fetched) or a schema too large is UnsupportedSchema."""

import json
import re

from jsonschema import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for
from llama_cpp.llama_grammar import SchemaConverter

# Sampling starts at a grammar's first rule (start_rule): one of our own above the converter's "root", which wraps it
# in `prefix` and `suffix`, named apart from the converter's rules (named after properties, from [a-zA-Z0-9-]).
ROOT = "chatapi-answer"
MAX_SCHEMA_CHARS = 32_000  # a schema as JSON: dozens of properties with descriptions
# In a URL (the chat API's ?schema=): gunicorn reads request lines of 8,190 bytes, and a character may take three
# URL-encoded ("{" is %7B).
MAX_QUERY_SCHEMA_CHARS = 2_600
MAX_DEPTH = 32  # nesting of objects and arrays in the schema
MAX_REPEAT = 1_000  # minItems, maxItems, minLength, maxLength: the grammar spells each repetition out
MAX_GRAMMAR_CHARS = 200_000

# What carries no constraint (annotations), and what the converter enforces.
ANNOTATIONS = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly", "$defs", "definitions", "format", "strict",
}
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "$ref", "minLength", "maxLength",
}
TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
# Formats the converter writes a rule for; any other format is an annotation (jsonschema does not assert it either).
ENFORCED_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
# $ref only to a definition (as pydantic writes them) or to the root (a recursive schema): every place a ref may
# lead is then walked by _check.
REF = re.compile(r"#(/(\$defs|definitions)/[^/]+)*")  # a definition's own definitions too
# A JSON string's character: none of the control characters JSON forbids raw (the converter's own rule lets a raw
# newline through, which no JSON parser reads).
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
# The first characters a value of each JSON type can start with: anyOf alternatives that share one keep llama.cpp's
# grammar matching several ways at once, and nested ones multiply them (24 levels of two array alternatives took
# seconds a token). MAX_AMBIGUITY bounds the product along any path.
FIRST_CHARS = {
    "object": "{", "array": "[", "string": '"', "number": "-0123456789", "integer": "-0123456789",
    "boolean": "tf", "null": "n",
}
MAX_AMBIGUITY = 16
ANY = frozenset("{[\"-0123456789tfn")


class UnsupportedSchema(ValueError):
    """A schema the grammar cannot enforce; the message names where and what."""


def _normalized(schema):
    """The schema with what the converter reads wrongly but means the same rewritten: `true` as {} and a
    `"type": [...]` beside other keywords as an anyOf of one type each (the converter would keep only the types)."""
    if schema is True:
        return {}
    if not isinstance(schema, dict):
        return schema
    schema = dict(schema)
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            schema[key] = {name: _normalized(sub) for name, sub in schema[key].items()}
    for key in ("anyOf", "prefixItems"):
        if isinstance(schema.get(key), list):
            schema[key] = [_normalized(sub) for sub in schema[key]]
    if isinstance(schema.get("items"), list):  # draft 7's tuple form is 2020-12's prefixItems
        schema["prefixItems"] = [_normalized(sub) for sub in schema.pop("items")]
    elif "items" in schema:
        schema["items"] = _normalized(schema["items"]) or {"type": "object"}  # {}: the converter fails on it
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _normalized(schema["additionalProperties"])
    kind = schema.get("type")
    constraints = schema.keys() - ANNOTATIONS - {"type"}
    if isinstance(kind, list) and constraints:
        rest = {key: schema.pop(key) for key in constraints}
        schema.pop("type")
        schema["anyOf"] = [{**rest, "type": one} for one in kind]
    return schema


def _check(schema, where: str, depth: int) -> None:
    """Refuse what the converter would not enforce, walking every subschema."""
    if depth > MAX_DEPTH:
        raise UnsupportedSchema(f"{where}: the schema is nested more than {MAX_DEPTH} levels deep")
    if schema is False:  # nothing validates
        raise UnsupportedSchema(f"{where}: a false schema cannot be generated")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{where}: a schema must be an object")
    for keyword in schema:
        if keyword not in ANNOTATIONS and keyword not in ENFORCED and not keyword.startswith("x-"):
            raise UnsupportedSchema(f"{where}: the keyword {keyword!r} is not supported")
    kind = schema.get("type")
    for one in kind if isinstance(kind, list) else [kind] if kind is not None else []:
        if one not in TYPES:
            raise UnsupportedSchema(f"{where}: the type {one!r} is not supported")
    ref = schema.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not REF.fullmatch(ref)):
        raise UnsupportedSchema(f"{where}: $ref may name the root (#) or a definition (#/$defs/NAME), not {ref!r}")
    if ref is not None and len(schema.keys() - ANNOTATIONS) > 1:
        raise UnsupportedSchema(f"{where}: keywords beside $ref are not supported")
    if schema.get("format") in ENFORCED_FORMATS and ("minLength" in schema or "maxLength" in schema):
        raise UnsupportedSchema(f"{where}: format cannot be combined with minLength or maxLength")
    if ("items" in schema or "prefixItems" in schema) and ("properties" in schema or kind == "object"):
        raise UnsupportedSchema(f"{where}: a schema is an object or an array, not both")
    if "prefixItems" in schema and ("items" in schema or "minItems" in schema or "maxItems" in schema):
        raise UnsupportedSchema(f"{where}: prefixItems is supported alone (no items, minItems or maxItems)")
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        if key in schema and not (isinstance(schema[key], int) and 0 <= schema[key] <= MAX_REPEAT):
            raise UnsupportedSchema(f"{where}: {key} must be an integer from 0 to {MAX_REPEAT}")
    for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
        if schema.get(low, 0) > schema.get(high, MAX_REPEAT):
            raise UnsupportedSchema(f"{where}: {low} is more than {high}: nothing validates")
    if "enum" in schema or "const" in schema:
        _check_values(schema, where)
    if "anyOf" in schema and len(schema.keys() - ANNOTATIONS) > 1:
        raise UnsupportedSchema(f"{where}: anyOf is supported alone")
    if "properties" in schema and schema.get("additionalProperties", False) is not False:
        # Extra keys could repeat a declared one ({"a": 1, "a": "x"}), which a parser reads as the last.
        raise UnsupportedSchema(f"{where}: beside properties, additionalProperties may only be false")
    missing = set(schema.get("required", [])) - set(schema.get("properties", {}))
    if missing:
        raise UnsupportedSchema(f"{where}: required names no property: {', '.join(sorted(missing))}")
    for key in ("properties", "$defs", "definitions"):
        for name, subschema in (schema.get(key) or {}).items():
            _check(subschema, f"{where}.{key}.{name}", depth + 1)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _check(schema[key], f"{where}.{key}", depth + 1)
    for key in ("anyOf", "prefixItems"):
        for index, subschema in enumerate(schema.get(key) or []):
            _check(subschema, f"{where}.{key}[{index}]", depth + 1)


def _check_values(schema: dict, where: str) -> None:
    """enum and const alone (but for a type, which their values must have: the converter writes the values only)."""
    if len(schema.keys() - ANNOTATIONS - {"type"}) > 1:
        raise UnsupportedSchema(f"{where}: enum and const are supported alone")
    values = schema["enum"] if "enum" in schema else [schema["const"]]
    if not values:
        raise UnsupportedSchema(f"{where}: an empty enum: nothing validates")
    if "type" in schema:
        typed = {"type": schema["type"]}
        if any(not Draft202012Validator(typed).is_valid(value) for value in values):
            raise UnsupportedSchema(f"{where}: a value of enum or const is not of the type beside it")


def _resolve(root: dict, ref: str) -> dict:
    target = root
    for part in ref.split("/")[1:]:
        target = target.get(part) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        raise UnsupportedSchema(f"$ref {ref!r} does not resolve within the schema")
    return target


def _first_chars(schema: dict, root: dict, seen: frozenset = frozenset()) -> frozenset:
    """The characters a value of the schema can start with (a ref cycle: any)."""
    if "$ref" in schema:
        ref = schema["$ref"]
        return ANY if ref in seen else _first_chars(_resolve(root, ref), root, seen | {ref})
    if "anyOf" in schema:
        return frozenset().union(*(_first_chars(sub, root, seen) for sub in schema["anyOf"]))
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        return frozenset(json.dumps(value)[0] for value in values)
    kind = schema.get("type")
    if kind is not None:
        return frozenset("".join(FIRST_CHARS[one] for one in (kind if isinstance(kind, list) else [kind])))
    if "properties" in schema or "additionalProperties" in schema:
        return frozenset("{")
    if "items" in schema or "prefixItems" in schema:
        return frozenset("[")
    return ANY


def _ambiguity(schema: dict, root: dict, stack: tuple = ()) -> int:
    """The most ways llama.cpp's grammar may be matching at once along any path of nested anyOf: at each, the most
    alternatives that share a first character, multiplied. A ref cycle through an ambiguous anyOf: unbounded."""
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in [entry for entry, _ in stack]:
            looping = stack[[entry for entry, _ in stack].index(ref) :]
            return MAX_AMBIGUITY + 1 if any(ways > 1 for _, ways in looping) else 1
        return _ambiguity(_resolve(root, ref), root, (*stack, (ref, 1)))
    ways = 1
    subschemas = list((schema.get("properties") or {}).values()) + list(schema.get("prefixItems") or [])
    subschemas += [schema[key] for key in ("items", "additionalProperties") if isinstance(schema.get(key), dict)]
    if "anyOf" in schema:
        firsts = [_first_chars(sub, root) for sub in schema["anyOf"]]
        ways = max(sum(char in first for first in firsts) for char in ANY)
        subschemas += schema["anyOf"]
        stack = (*stack, ("", ways))
    return ways * max([_ambiguity(sub, root, stack) for sub in subschemas], default=1)


def start_rule(grammar: str) -> str:
    """The name of the rule sampling starts at: the grammar's first."""
    return grammar.split("::=", 1)[0].strip()


def _root_name(rules: dict) -> str:
    name, index = ROOT, 0
    while name in rules:
        index += 1
        name = f"{ROOT}{index}"
    return name


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF literal is a JSON string: \" \\ \n \uXXXX escapes alike


def schema_grammar(schema: dict, prefix: str = "", suffix: str = "") -> str:
    """The GBNF that generates `prefix`, then JSON valid against `schema`, then `suffix` (from its first rule).
    UnsupportedSchema for a schema it cannot enforce."""
    if not isinstance(schema, dict):
        raise UnsupportedSchema("the schema must be a JSON object")
    if len(json.dumps(schema, ensure_ascii=False)) > MAX_SCHEMA_CHARS:
        raise UnsupportedSchema(f"the schema is longer than {MAX_SCHEMA_CHARS} characters")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise UnsupportedSchema(f"not a valid JSON Schema: {exc.message}") from None
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1 and len(schema) == 1:
        schema = schema["allOf"][0]
    schema = _normalized(schema)
    _check(schema, "$", 0)
    if _ambiguity(schema, schema) > MAX_AMBIGUITY:
        raise UnsupportedSchema(
            f"anyOf alternatives that begin alike are nested too deeply (more than {MAX_AMBIGUITY} ways at once)"
        )
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "schema")
        converter.visit(resolved, "")
    except Exception as exc:  # noqa: BLE001 (the converter raises anything on what it cannot read: a 400, never a 500)
        raise UnsupportedSchema(f"the schema cannot be made a grammar: {exc!r}") from None
    rules = converter._rules  # the converter's own rules, to name ours apart from them
    if "char" in rules:
        rules["char"] = JSON_CHAR
    top = _root_name(rules)
    parts = [_literal(prefix)] if prefix else []
    parts.append("root")
    if suffix:
        parts.append(_literal(suffix))
    grammar = f"{top} ::= {' '.join(parts)}\n{converter.format_grammar()}"
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise UnsupportedSchema("the schema makes a grammar too large")
    return grammar


# Any JSON object (response_format json_object): the converter's own rule for an object of any values.
JSON_OBJECT_GRAMMAR = schema_grammar({"type": "object"})


def reply_grammar(reply_format: str | None, schema_text: str | None) -> str | None:
    """The chat API's `?format=json` (any JSON object) with `&schema=` (a JSON Schema as JSON text, which implies
    format=json): the grammar of a chat's reply; None for text. UnsupportedSchema for a schema it cannot enforce."""
    if schema_text is None:
        return JSON_OBJECT_GRAMMAR if reply_format == "json" else None
    if reply_format == "text":
        raise UnsupportedSchema("a schema is for format=json")
    try:
        schema = json.loads(schema_text)
    except ValueError as exc:
        raise UnsupportedSchema(f"not JSON: {exc}") from None
    return schema_grammar(schema)


def response_format_grammar(response_format: dict | None) -> str | None:
    """The grammar of OpenAI's `response_format`: None for text (or none given), any JSON object for `json_object`,
    the schema's for `json_schema` ({"type": "json_schema", "json_schema": {"name", "schema", "strict"}}).
    UnsupportedSchema for anything else."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise UnsupportedSchema("must be an object with a type")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GRAMMAR
    if kind != "json_schema":
        raise UnsupportedSchema(f"the type must be text, json_object or json_schema, not {kind!r}")
    described = response_format.get("json_schema")
    if not isinstance(described, dict) or not isinstance(described.get("name"), str):
        raise UnsupportedSchema("json_schema must be an object with a name and a schema")
    schema = described.get("schema", {})
    return schema_grammar(schema)

"""Structured output in the engine (issue 25): a reply sampled under a grammar made from a JSON Schema always
validates, beside replies in the same batch that are not constrained at all; a schema the grammar cannot enforce
is refused before anything is generated. The real model, in this process (the chat API's and /v1's routes to it:
tests/test_inference.py, tests/test_openai_structured.py)."""

import json
import re
from enum import Enum
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from chatapi.llm.engine import Engine, Job, Options
from chatapi.llm.grammar import (
    JSON_OBJECT_GRAMMAR,
    UnsupportedSchema,
    reply_grammar,
    response_format_grammar,
    schema_grammar,
)
from chatapi.llm.model import Model, default_model_path
from chatapi.llm.prompt import Message, PromptBuilder
from tests.support.server import ROOT

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model():
    loaded = Model(str(default_model_path(ROOT / "instance" / "models")), 2048, 2, 4)
    yield loaded
    loaded.close()


def job(model, chat: str, question: str, texts: list, max_tokens: int, temperature: float = 0, seed: int = 1,
        grammar: str | None = None) -> Job:
    prompt = PromptBuilder(model).build("", [Message("Human", question)], 1500)
    options = Options(max_tokens=max_tokens, temperature=temperature, top_p=0.95, seed=seed, grammar=grammar)
    return Job(chat, prompt, options, on_text=texts.append)


def run_together(engine: Engine, jobs: list[Job]) -> list:
    """Every job admitted in one step and stepped together to its end: their results, in the jobs' order."""
    results, new = {}, list(jobs)
    while len(results) < len(jobs):
        results.update((id(job), result) for job, result in engine.step(new))
        new = []
    return [results[id(job)] for job in jobs]


@pytest.mark.parametrize("seed", range(5))
def test_a_schema_reply_validates_beside_a_plain_reply_that_is_not_constrained(model, seed):
    """Five draws at temperature 0.7: each parses and validates (or was cut by max_tokens, the only way it may be
    cut); the plain reply in the same batch is token for token what it is alone (no grammar leaked into it)."""
    engine = Engine(model, 128)
    alone: list[str] = []
    engine.generate(job(model, "alone", "What is the capital of France?", alone, 24))
    structured, plain = [], []
    constrained = job(model, "json", "Describe a person.", structured, 96, 0.7, seed, schema_grammar(PERSON))
    unconstrained = job(model, "plain", "What is the capital of France?", plain, 24)
    held, _ = run_together(engine, [constrained, unconstrained])
    assert "".join(plain) == "".join(alone) and not "".join(plain).lstrip().startswith("{")
    assert held.finish_reason == "stop", "".join(structured)
    jsonschema.validate(json.loads("".join(structured)), PERSON)


def test_a_reply_under_a_grammar_is_cut_only_by_max_tokens(model):
    texts: list[str] = []
    cut = job(model, "cut", "Describe a person.", texts, 6, grammar=schema_grammar(PERSON))
    result = Engine(model, 128).generate(cut)
    assert result.finish_reason == "length" and result.completion_tokens == 6
    assert re.match(r'\{ ?"name"', "".join(texts))  # the grammar's start, cut before its end


def test_any_json_object(model):
    texts: list[str] = []
    result = Engine(model, 128).generate(job(model, "obj", "Give me JSON.", texts, 64, 0.7, 3, JSON_OBJECT_GRAMMAR))
    assert result.finish_reason in ("stop", "length")
    if result.finish_reason == "stop":
        assert isinstance(json.loads("".join(texts)), dict)
    else:
        assert "".join(texts).startswith("{")


def test_a_grammar_llama_cpp_cannot_parse_ends_its_job_only(model):
    assert not model.grammar_parses("root ::= (")
    engine = Engine(model, 128)
    broken, fine = [], []
    bad = job(model, "bad", "Hello", broken, 8, grammar="root ::= (")
    good = job(model, "good", "Hello", fine, 8)
    refused, answered = run_together(engine, [bad, good])
    assert refused.finish_reason == "error" and "grammar" in refused.error and broken == []
    assert answered.finish_reason in ("stop", "length") and "".join(fine)


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    number: int | None = None


class Order(BaseModel):
    kind: Literal["order"]
    colour: Colour
    items: list[str] = Field(max_length=4)
    address: Address
    note: str | None


def test_the_schemas_pydantic_makes_are_enforced(model):
    """$defs and $ref, enum, Literal (const), Optional (anyOf with null), nested models: all made grammars that
    llama.cpp reads, and what they generate validates."""
    schema = Order.model_json_schema()
    grammar = schema_grammar(schema)
    assert model.grammar_parses(grammar)
    texts: list[str] = []
    result = Engine(model, 128).generate(job(model, "order", "An order:", texts, 160, 0.7, 2, grammar))
    if result.finish_reason == "stop":
        Order.model_validate_json("".join(texts))
        jsonschema.validate(json.loads("".join(texts)), schema)


# 24 levels of anyOf between two array schemas: llama.cpp's grammar would follow 2^n ways at once (seconds a token).
NESTED_ALIKE = {
    "type": "object",
    "properties": {"a": {"$ref": "#/$defs/D24"}},
    "$defs": {"D0": {"type": "integer"}}
    | {
        f"D{k}": {"anyOf": [{"type": "array", "items": {"$ref": f"#/$defs/D{k - 1}"}, "maxItems": m} for m in (9, 2)]}
        for k in range(1, 25)
    },
}


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"type": "integer", "minimum": 3}, "'minimum' is not supported"),
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}, "$.properties.a: the keyword"),
        ({"not": {"type": "string"}}, "'not' is not supported"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
        ({"$ref": "https://example.com/schema.json"}, "$ref may name the root"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"type": "string", "pattern": "^[a-z]+$"}, "'pattern' is not supported"),  # the converter's are not JSON-safe
        ({"type": "string", "enum": ["a", 1]}, "not of the type beside it"),
        ({"enum": []}, "an empty enum"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "required names no property: b"),
        ({"properties": {"a": {"type": "integer"}}, "additionalProperties": True}, "may only be false"),
        ({"properties": {"a": {"$ref": "#/x-defs/b"}}, "x-defs": {"b": {"minimum": 3}}}, "$ref may name the root"),
        ({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"minimum": 5}]}, "'minimum'"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems is more than maxItems"),
        ({"type": "string", "minLength": 3, "maxLength": 1}, "minLength is more than maxLength"),
        (NESTED_ALIKE, "nested too deeply"),
        ({"type": "strange"}, "not a valid JSON Schema"),
        ({"type": "array", "maxItems": 100000}, "maxItems must be an integer from 0 to"),
        ({"properties": {"a": False}}, "a false schema"),
        ({"description": "x" * 40_000}, "longer than"),
    ],
)
def test_what_the_grammar_cannot_enforce_is_refused_naming_it(schema, said):
    with pytest.raises(UnsupportedSchema) as refused:
        schema_grammar(schema)
    assert said in str(refused.value)


def test_response_formats_and_the_chat_apis_format():
    assert response_format_grammar(None) is None and response_format_grammar({"type": "text"}) is None
    assert response_format_grammar({"type": "json_object"}) == JSON_OBJECT_GRAMMAR
    named = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    assert response_format_grammar(named) == schema_grammar(PERSON)
    for wrong in ({"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": {}}}, []):
        with pytest.raises(UnsupportedSchema):
            response_format_grammar(wrong)
    assert reply_grammar(None, None) is None and reply_grammar("text", None) is None
    assert reply_grammar("json", None) == JSON_OBJECT_GRAMMAR
    assert reply_grammar(None, json.dumps(PERSON)) == reply_grammar("json", json.dumps(PERSON))
    for format_, text in (("text", json.dumps(PERSON)), ("json", "{not json")):
        with pytest.raises(UnsupportedSchema):
            reply_grammar(format_, text)


def test_a_prefix_and_suffix_wrap_the_json():
    grammar = schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}}, "<call>", "</call>")
    first = grammar.splitlines()[0]
    assert first == 'chatapi-answer ::= "<call>" root "</call>"'
    # A property named like our start rule does not take its place.
    clash = schema_grammar({"type": "object", "properties": {"chatapi-answer": {"type": "string", "maxLength": 3}}})
    assert "\nchatapi-answer ::= " in clash  # the property's own rule
    assert clash.splitlines()[0].startswith("chatapi-answer1 ::= root")


def test_what_the_converter_reads_wrongly_is_rewritten_and_enforced(model):
    """A type list beside other keywords (as OpenAI's strict mode writes optional fields) keeps them; `true` and {}
    subschemas are any value; a map (additionalProperties alone) is served."""
    nullable = {
        "type": ["object", "null"],
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    for schema in (
        nullable,
        {"type": ["string", "null"], "maxLength": 3},
        {"type": "array", "items": True, "maxItems": 2},
        {"type": "object", "properties": {"a": True}, "required": ["a"]},
        {"type": "object", "additionalProperties": {"type": "integer"}},
    ):
        grammar = schema_grammar(schema)
        assert model.grammar_parses(grammar)
        texts: list[str] = []
        result = Engine(model, 128).generate(job(model, f"rewritten{id(schema)}", "JSON:", texts, 48, 0.7, 9, grammar))
        if result.finish_reason == "stop":
            jsonschema.validate(json.loads("".join(texts)), schema)
    assert '"{" space' not in schema_grammar(nullable).split("root ::= ")[1].split("\n")[0]  # an anyOf, not just {}


@pytest.mark.parametrize("grammar", [schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}}),
                                     JSON_OBJECT_GRAMMAR])
def test_a_string_never_holds_a_raw_newline_and_stop_strings_do_not_cut_json(model, grammar):
    """Asked to repeat text with a newline in a string, and a turn marker (the transcript's stop string) after it:
    the JSON parses (JSON forbids raw control characters; the grammar's strings do too) and is not cut."""
    for question in (
        'Repeat exactly, character for character: {"a": "roses are red\nviolets are blue"}',
        'Repeat exactly, character for character: {"a": "roses\nHuman: are red"}',
    ):
        texts: list[str] = []
        repeated = job(model, f"newline{len(question)}", question, texts, 64, grammar=grammar)
        result = Engine(model, 128).generate(repeated)
        assert result.finish_reason == "stop" and isinstance(json.loads("".join(texts)), dict), "".join(texts)

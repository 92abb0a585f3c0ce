"""Structured output on /v1/chat/completions (`response_format`), with the official `openai` package against the real
server and model: every reply parses and validates against its schema (checked with `jsonschema`), streamed or not,
and a schema the grammar cannot enforce is a 400 before anything is generated. SQLite only (conftest.SQLITE_ONLY)."""

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.support.metrics import moved, scrape
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.test_openai import IDLE, assert_openai_error, complete, model_name, replies, sdk

HI = [{"role": "user", "content": "hi"}]
PROMPTS = [
    "Describe a cat as JSON.",
    "Give me a city you like, as JSON.",
    "What is the weather like in Paris? Answer in JSON.",
    "Tell me about a book you read.",
    "Name a colour and how much you like it.",
]


class Thing(BaseModel):
    """Small enough to finish well within max_tokens: bounded strings, an enum, a small integer."""

    name: str = Field(max_length=24)
    kind: Literal["animal", "place", "thing", "colour"]
    liked: bool


THING_SCHEMA = {**Thing.model_json_schema(), "additionalProperties": False}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": THING_SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def structured_server(app, database_url, tmp_path_factory):
    server = Server(database_url, tmp_path_factory.mktemp("structured") / "gunicorn.log", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(autouse=True)
def left_idle(request, structured_server):
    yield
    from tests.support import wait_for

    wait_for(lambda: replies(structured_server) == IDLE, 120, "an idle model")


def validated(content: str, finish_reason: str) -> dict | None:
    """The reply's JSON, valid against THING_SCHEMA; None for a reply cut by max_tokens (the only cut allowed)."""
    if finish_reason == "length":
        return None
    assert finish_reason == "stop", finish_reason
    value = json.loads(content)
    jsonschema.validate(value, THING_SCHEMA)
    return value


def test_parse_with_a_pydantic_model_validates_every_reply(structured_server):
    client = sdk(structured_server)
    finished = 0
    for prompt in PROMPTS:
        completion = client.chat.completions.parse(
            model=model_name(structured_server),
            messages=[{"role": "user", "content": prompt}],
            response_format=Thing,
            max_tokens=96,
            temperature=0.7,
        )
        choice = completion.choices[0]
        if validated(choice.message.content, choice.finish_reason) is not None:
            assert isinstance(choice.message.parsed, Thing)
            finished += 1
    assert finished == len(PROMPTS)  # the schema is small enough for every reply to finish


def test_a_streamed_reply_validates(structured_server):
    stream = sdk(structured_server).chat.completions.create(
        model=model_name(structured_server),
        messages=[{"role": "user", "content": PROMPTS[0]}],
        response_format=JSON_SCHEMA_FORMAT,
        max_tokens=96,
        temperature=0.7,
        stream=True,
    )
    pieces, finish_reason = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish_reason = chunk.choices[0].finish_reason or finish_reason
    assert len([p for p in pieces if p]) > 1  # streamed as it was made
    assert validated("".join(pieces), finish_reason) is not None


def test_the_sdks_stream_helper_parses_the_model(structured_server):
    with sdk(structured_server).chat.completions.stream(
        model=model_name(structured_server),
        messages=[{"role": "user", "content": PROMPTS[1]}],
        response_format=Thing,
        max_tokens=96,
        temperature=0.7,
    ) as stream:
        completion = stream.get_final_completion()
    assert isinstance(completion.choices[0].message.parsed, Thing)


def test_json_object_is_a_json_object(structured_server):
    completion = sdk(structured_server).chat.completions.create(
        model=model_name(structured_server),
        messages=[{"role": "user", "content": "Give me a JSON object with your name."}],
        response_format={"type": "json_object"},
        max_tokens=64,
        temperature=0,
    )
    choice = completion.choices[0]
    if choice.finish_reason != "length":
        assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}},  # not enforced by the grammar
        {"type": "object", "properties": {"n": {"$ref": "#/$defs/missing"}}},  # does not resolve
        {"type": "object", "properties": {"n": {"$ref": "https://example.com/schema.json"}}},  # never fetched
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    ],
)
def test_a_schema_the_grammar_cannot_enforce_is_refused_before_anything_is_generated(structured_server, schema):
    before = scrape(structured_server)
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    response = complete(structured_server, messages=HI, response_format=response_format)
    assert_openai_error(response, 400, "invalid_request_error", "response_format", "invalid_request_error")
    assert moved(before, scrape(structured_server), "chatapi_replies_started_total", mode="openai") == 0
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(structured_server).chat.completions.create(
            model=model_name(structured_server),
            messages=[{"role": "user", "content": "hi"}],
            response_format=response_format,
            stream=True,
        )
    assert raised.value.param == "response_format"


@pytest.mark.parametrize(
    "response_format",
    [{"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": {}}}, "json"],
)
def test_a_response_format_that_is_not_one_is_a_bad_request(structured_server, response_format):
    response = complete(structured_server, messages=HI, response_format=response_format)
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format", response.text


@pytest.mark.parametrize("response_format", [JSON_SCHEMA_FORMAT, {"type": "json_object"}])
def test_stop_with_a_json_response_format_is_a_bad_request(structured_server, response_format):
    response = complete(
        structured_server, messages=[{"role": "user", "content": "hi"}], response_format=response_format, stop=["}"]
    )
    assert_openai_error(response, 400, "invalid_request_error", "stop")


def test_the_text_format_is_plain_text(structured_server):
    response = complete(
        structured_server,
        messages=[{"role": "user", "content": "Say hello."}],
        response_format={"type": "text"},
        stop=["\n"],
        max_tokens=8,
    )
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]

"""Tools on /v1/chat/completions: the models' tool-call syntaxes read back (chatapi/llm/tool_calls.py) and the tools'
rendering into a prompt (no model needed); forced calls whose arguments validate, streamed as OpenAI streams them and
reassembled by the official `openai` package, and a round trip, on the real server and model (the bundled Gemma 3,
whose template has no tool section: the fallback rendering); on the remote backend, tools and response_format passed
through to a small upstream on 127.0.0.1 whose malformed tool-call deltas end the reply with an error. SQLite only
(conftest.SQLITE_ONLY)."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import jsonschema
import openai
import pydantic
import pytest

from chatapi.llm.grammar import schema_grammar
from chatapi.llm.model import Vocabulary, default_model_path
from chatapi.llm.prompt import Message, PromptBuilder, TemplateRenderer, tools_as_text
from chatapi.llm.tool_calls import (
    MARKERS,
    OPEN,
    READERS,
    MalformedToolCall,
    ToolCall,
    UpstreamToolCalls,
    call_schema,
    held_from,
    parse,
)
from chatapi.openai_api.wire import Completion
from tests.support import wait_for
from tests.support.chats import QUESTION, infer, new_chat
from tests.support.metrics import moved, scrape
from tests.support.server import FAST_STREAM_SETTINGS, ROOT, Server
from tests.support.sse import read_events
from tests.test_openai import IDLE, assert_openai_error, complete, model_name, replies, sdk

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city now.", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a city now.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMES = {"get_weather", "get_time"}


# The parsers (no model needed)


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        # Qwen / Hermes
        ('<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>', "", [("get_time", "Oslo")]),
        (
            'Let me look.<tool_call>{"name": "get_time", "arguments": {"city": "Oslo"}}</tool_call>'
            '<tool_call>{"name": "get_time", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>',
            "Let me look.",
            [("get_time", "Oslo"), ("get_time", "Rome")],
        ),
        ('<tool_call>{"name": "get_time", "arguments": {"city": "Oslo"}}', "", [("get_time", "Oslo")]),  # cut tag
        # Llama 3: python_tag, and a bare object with "parameters"
        ('<|python_tag|>{"name": "get_time", "parameters": {"city": "Oslo"}}<|eom_id|>', "", [("get_time", "Oslo")]),
        ('{"name": "get_time", "parameters": {"city": "Oslo"}}', "", [("get_time", "Oslo")]),
        ('<|python_tag|>get_time.call(city="Oslo")', "", [("get_time", "Oslo")]),
        # Mistral: a list, and the newer name[ARGS]
        (
            '[TOOL_CALLS][{"name": "get_time", "arguments": {"city": "Oslo"}}, '
            '{"name": "get_time", "arguments": {"city": "Rome"}}]',
            "",
            [("get_time", "Oslo"), ("get_time", "Rome")],
        ),
        ('[TOOL_CALLS]get_time[ARGS]{"city": "Oslo"}', "", [("get_time", "Oslo")]),
        # Gemma: tool_code as Python, and JSON in a fence
        ('```tool_code\nget_time(city="Oslo")\n```', "", [("get_time", "Oslo")]),
        ('Sure.\n```json\n{"name": "get_time", "parameters": {"city": "Oslo"}}\n```', "Sure.", [("get_time", "Oslo")]),
    ],
)
def test_the_models_tool_call_syntaxes_are_read(text, content, calls):
    read_content, read_calls = parse(text, NAMES)
    assert read_content == content
    assert [(call.name, call.arguments["city"]) for call in read_calls] == calls


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not a tool offered
        '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "get_time", "arguments": {"city": </tool_call>',  # not JSON
        '```python\nprint("hi")\n```',
        '{"city": "Oslo"}',  # JSON, no call
        "```tool_code\nget_time(__import__('os'))\n```",  # not literal keyword arguments
    ],
)
def test_what_is_no_call_of_a_tool_offered_stays_text(text):
    assert parse(text, NAMES) == (text.strip(), [])


def test_text_that_may_be_the_start_of_a_call_is_held_back():
    assert held_from("Hello there", True) == len("Hello there")
    assert held_from("Hello <tool", True) == len("Hello ")
    assert held_from("Hello <tool_call>{", True) == len("Hello ")
    assert held_from("a [TOOL_CALLS", True) == 2
    assert held_from("<b>", True) == 3
    assert held_from('{"name"', False) == 0  # a bare JSON call is a whole reply
    assert held_from('{"name"', True) == len('{"name"')


def test_upstream_deltas_make_the_one_text_form_or_are_malformed():
    calls = UpstreamToolCalls()
    calls.add([{"index": 0, "id": "x", "type": "function", "function": {"name": "get_time", "arguments": ""}}])
    calls.add([{"index": 0, "function": {"arguments": '{"city": '}}])
    calls.add([{"index": 0, "function": {"arguments": '"Oslo"}'}}, {"index": 1, "function": {"name": "get_time"}}])
    text = calls.text()
    assert text == ToolCall("get_time", {"city": "Oslo"}).text() + ToolCall("get_time", {}).text()
    assert parse(text, NAMES)[1] == [ToolCall("get_time", {"city": "Oslo"}), ToolCall("get_time", {})]
    for deltas in (
        [{"index": 1, "function": {"name": "f"}}],  # skips index 0
        [{"index": "0", "function": {"name": "f"}}],
        [{"index": 0, "function": {"arguments": "{}"}}],  # no name
        [{"index": 0, "function": "get_time"}],  # function not an object
        [{"index": 0, "function": ["get_time"]}],
        ["not an object"],
        "not a list",
    ):
        with pytest.raises(MalformedToolCall):
            UpstreamToolCalls().add(deltas)
    for arguments in ('{"city": ', "[1, 2]", '{"a": ' + "[" * 100_000, '{"a": NaN}'):
        bad = UpstreamToolCalls()
        bad.add([{"index": 0, "function": {"name": "f", "arguments": arguments}}])
        with pytest.raises(MalformedToolCall):
            bad.text()


def test_an_upstream_delta_without_an_index_is_the_one_calls():
    """Some servers leave `index` out: while there is at most one call, a delta without it is that call's."""
    calls = UpstreamToolCalls()
    calls.add([{"id": "x", "type": "function", "function": {"name": "get_time", "arguments": '{"city": '}}])
    calls.add([{"function": {"arguments": '"Oslo"}'}}])
    assert calls.text() == ToolCall("get_time", {"city": "Oslo"}).text()
    calls.add([{"index": 1, "function": {"name": "get_weather", "arguments": "{}"}}])
    with pytest.raises(MalformedToolCall):  # two calls: which one is not for us to guess
        calls.add([{"function": {"arguments": "{}"}}])


@pytest.mark.parametrize(
    "text",
    [
        "```tool_code\nget_time(city={1, 2})\n```",  # a set
        '```tool_code\nget_time(city=b"x")\n```',  # bytes
        "```tool_code\nget_time(city=...)\n```",
        "```tool_code\nget_time(city={(1, 2): 3})\n```",  # a key JSON cannot have
        "```tool_code\nget_time(city=1e999)\n```",  # Infinity
        '<tool_call>{"name": "get_time", "arguments": {"city": NaN}}</tool_call>',
        '<tool_call>{"name": "get_time", "arguments": {"city": -Infinity}}</tool_call>',
        "<tool_call>" + "[" * 100_000,  # nested too deeply to read
        '{"a":' + "[" * 100_000,
        "```tool_code\nget_time(city=" + "[" * 100_000 + "\n```",
        "```tool_code\nget_time(city=" + "[" * 500 + "]" * 500 + ")\n```",
    ],
)
def test_arguments_json_cannot_hold_stay_text(text):
    assert parse(text, NAMES) == (text.strip(), [])


def test_a_closing_tag_inside_an_argument_does_not_end_the_call():
    call = ToolCall("get_time", {"city": "</tool_call> Oslo"})
    assert parse(f"Here.{call.text()} and after", NAMES) == ("Here. and after", [call])
    assert parse(call.text()[: -len("</tool_call>")], NAMES) == ("", [call])  # its closing tag cut
    assert parse(f"{OPEN}{json.dumps({'name': 'get_time', 'arguments': {}})} junk</tool_call>", NAMES)[1] == []


def test_calls_in_auto_mode_are_validated_against_the_tools_parameters():
    valid = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
    assert parse(valid, SCHEMAS)[1] == [ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})]
    for arguments in ({"city": "Paris", "unit": "kelvin"}, {"city": "Paris"}, {"properties": {}, "type": "object"}):
        text = f"```json\n{json.dumps({'name': 'get_weather', 'arguments': arguments})}\n```"
        assert parse(text, SCHEMAS) == (text, [])
    assert parse("```tool_code\nget_time(city=3)\n```", SCHEMAS)[1] == []
    # Parameters jsonschema cannot use do not stop a call: only the grammar of a forced call enforces them.
    broken = {"get_time": {"type": "object", "properties": {"city": {"$ref": "#/$defs/missing"}}}}
    assert parse('<tool_call>{"name": "get_time", "arguments": {"city": "Oslo"}}', broken)[1]


def test_every_reader_is_a_marker_held_back_in_a_stream():
    assert set(READERS) == set(MARKERS)
    for text in ("```\n{", "```tool_call\n", "```json", "```tool_code"):
        assert held_from("Hi " + text, True) == 3
        _, calls = parse(f"Hi {text.split(chr(10))[0]}\n" + json.dumps({"name": "get_time", "arguments": {}}), NAMES)
        assert calls == [ToolCall("get_time", {})]  # and the whole reply reads it as a call
    assert held_from("a ``", True) == 2


class Place(pydantic.BaseModel):
    city: str
    country: str


class Trip(pydantic.BaseModel):
    start: Place
    stops: list[Place] = pydantic.Field(max_length=2)  # a call the model finishes within max_tokens


def test_parameters_with_defs_keep_their_refs_in_the_call_schema():
    tool = openai.pydantic_function_tool(Trip)
    parameters = tool["function"]["parameters"]
    assert "$defs" in parameters
    schema = call_schema([tool["function"], TOOLS[1]["function"]])
    arguments = {"start": {"city": "Oslo", "country": "Norway"}, "stops": []}
    jsonschema.validate({"name": "Trip", "arguments": arguments}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "Trip", "arguments": {"start": {"city": "Oslo"}, "stops": []}}, schema)
    assert schema_grammar(schema)
    assert schema_grammar(call_schema([{"name": "self", "parameters": {"type": "object", "properties": {
        "next": {"$ref": "#"}}}}]))


class FakeReply:
    """A reply that has ended: its records are given."""

    def __init__(self, records: list):
        self.records, self.message_id, self.finished = records, uuid.uuid4(), True

    def listen(self, records: bool):
        return iter(self.records)


def test_text_held_back_is_streamed_before_an_error():
    records = [(None, {"content": "Let me see. "}), (None, {"content": "<tool_call>{\"na"})]
    error = ("error", {"code": 502, "message": "the model server failed"})
    chunks = list(Completion(FakeReply([*records, error]), "m", SCHEMAS).chunks(None, False))
    events = [json.loads(chunk.split("data: ", 1)[1]) for chunk in chunks if chunk.startswith("data: ")]
    content = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if "choices" in event)
    assert content == 'Let me see. <tool_call>{"na'
    assert events[-1]["error"]["message"] == "the model server failed"


# Rendering (no model needed: a template and the fallback's text)


class FakeModel:
    def __init__(self, template: str):
        self.chat_template, self.eos, self.bos = template, "<eos>", "<bos>"


# A template with a tool section, in the style of Qwen's (the tools listed, calls and results in their own tags).
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}"
    "{% if m.tool_call_id %}[for {{ m.tool_call_id }}]{% endif %}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# Gemma 3's way: alternating roles, no tool section, no tool role.
ALTERNATING_TEMPLATE = (
    "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}"
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}}
ROUND_TRIP = [
    Message("Human", "What time is it in Oslo?"),
    Message("Assistant", "", (CALL,)),
    Message("Tool", "10:42", tool_call_id="call_1"),
    Message("Human", "And is that late?"),
]


def test_a_template_with_a_tool_section_renders_the_tools_calls_and_results():
    render = TemplateRenderer(FakeModel(TOOL_TEMPLATE))
    assert render.tool_section
    text = render("", ROUND_TRIP, TOOLS)
    assert "<tools>get_weather;get_time;</tools>" in text
    assert '<assistant>[call get_time {"city": "Oslo"}]</assistant>' in text  # the arguments as an object
    assert "<tool>10:42[for call_1]</tool>" in text


def test_without_a_tool_section_tools_calls_and_results_are_text_in_alternating_turns():
    assert not TemplateRenderer(FakeModel(ALTERNATING_TEMPLATE)).tool_section
    system, turns = tools_as_text("Be brief.", [*ROUND_TRIP[:3], Message("Tool", "sunny", tool_call_id="zz")], TOOLS)
    assert system.startswith("Be brief.\n\nYou can call the functions below")
    assert json.dumps(TOOLS[0]["function"]) in system and "<tool_call>" in system
    assert [turn.role for turn in turns] == ["Human", "Assistant", "Human"]  # the two results in one turn
    assert turns[1].text == '<tool_call>{"name": "get_time", "arguments": {"city": "Oslo"}}</tool_call>'
    assert turns[2].text.startswith('<tool_response>{"name": "get_time"}\n10:42\n</tool_response>')
    assert turns[2].text.endswith('<tool_response>{"name": ""}\nsunny\n</tool_response>')
    with pytest.raises(ValueError, match="alternate"):  # what the fallback spares a template such as Gemma's
        TemplateRenderer(FakeModel(ALTERNATING_TEMPLATE)).formatter(
            messages=[{"role": role, "content": "x"} for role in ("user", "assistant", "tool", "user")]
        )


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary(default_model_path(ROOT / "instance" / "models"))


def rendered(vocabulary, template: str | None, tools) -> str:
    vocabulary.chat_template = template
    prompt = PromptBuilder(vocabulary).build("Be brief.", ROUND_TRIP, 2048, cut=False, tools=tools)
    return vocabulary.detokenize(prompt.tokens)


def test_the_prompt_offers_the_tools_by_the_template_or_as_text(vocabulary):
    native = rendered(vocabulary, TOOL_TEMPLATE, TOOLS)
    assert "<tools>get_weather;get_time;</tools>" in native and "<tool>10:42[for call_1]</tool>" in native
    assert "You can call the functions" not in native
    for template in (ALTERNATING_TEMPLATE.replace("{{ m.content }}", "{{ m.content }}|"), None):  # Gemma's, none
        text = rendered(vocabulary, template, TOOLS)
        assert "You can call the functions below" in text and '"name": "get_weather"' in text
        assert '<tool_call>{"name": "get_time", "arguments": {"city": "Oslo"}}</tool_call>' in text
        assert '<tool_response>{"name": "get_time"}\n10:42\n</tool_response>' in text
    # Not offered (tool_choice "none"): the earlier calls and results are text all the same.
    text = rendered(vocabulary, None, ())
    assert "You can call" not in text and "<tool_response>" in text


# On the real model


@pytest.fixture(scope="module")
def tools_server(app, database_url, tmp_path_factory):
    server = Server(database_url, tmp_path_factory.mktemp("tools") / "gunicorn.log", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture
def idle_after(tools_server):
    yield tools_server
    wait_for(lambda: replies(tools_server) == IDLE, 120, "an idle model")


def assert_calls_validate(tool_calls, names: set[str]) -> list[dict]:
    """Each call names a tool given, with arguments (a JSON string) valid against its parameters."""
    arguments = []
    assert tool_calls
    for call in tool_calls:
        assert call.id.startswith("call_") and call.type == "function" and call.function.name in names
        value = json.loads(call.function.arguments)
        jsonschema.validate(value, SCHEMAS[call.function.name])
        arguments.append(value)
    return arguments


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [("required", NAMES), ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})],
)
def test_a_forced_call_has_arguments_that_validate(idle_after, tool_choice, names):
    for temperature in (0, 0.7, 1.0):
        completion = sdk(idle_after).chat.completions.create(
            model=model_name(idle_after),
            messages=ASK_WEATHER,
            tools=TOOLS,
            tool_choice=tool_choice,
            max_tokens=96,
            temperature=temperature,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        assert_calls_validate(choice.message.tool_calls, names)


def test_a_streamed_call_is_reassembled_by_the_sdk(idle_after):
    params = {
        "model": model_name(idle_after),
        "messages": ASK_WEATHER,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 96,
        "temperature": 0.7,
    }
    chunks = list(sdk(idle_after).chat.completions.create(**params, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, *fragments = [delta for (delta,) in deltas]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert fragments and all(f.index == 0 and f.id is None and f.function.name is None for f in fragments)
    jsonschema.validate(json.loads("".join(f.function.arguments for f in fragments)), WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)  # the call was never text
    with sdk(idle_after).chat.completions.stream(**params) as stream:
        completion = stream.get_final_completion()
    assert completion.choices[0].finish_reason == "tool_calls"
    assert_calls_validate(completion.choices[0].message.tool_calls, {"get_weather"})


def test_a_round_trip_the_tools_result_is_answered_with_text(idle_after):
    client = sdk(idle_after)
    first = client.chat.completions.create(
        model=model_name(idle_after), messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", max_tokens=96
    )
    message = first.choices[0].message
    (call,) = message.tool_calls
    result = {"temperature": 21, "sky": "clear"}
    follow_up = [
        *ASK_WEATHER,
        message.model_dump(exclude_none=True),  # content null, tool_calls
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    answer = client.chat.completions.create(
        model=model_name(idle_after), messages=follow_up, tools=TOOLS, tool_choice="none", max_tokens=32, temperature=0
    )
    choice = answer.choices[0]
    assert choice.message.content and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")


def test_a_forced_call_of_a_pydantic_tool_with_defs_validates(idle_after):
    tool = openai.pydantic_function_tool(Trip)
    completion = sdk(idle_after).chat.completions.create(
        model=model_name(idle_after),
        messages=[{"role": "user", "content": "Plan a trip from Oslo to Rome."}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "Trip"}},
        max_tokens=160,
        temperature=0.7,
        seed=3,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), tool["function"]["parameters"])


def test_a_json_response_format_with_tools_is_the_json_not_a_call(idle_after):
    """Under a JSON response_format the reply is the JSON, even where it could be read as a call."""
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}]
    ask = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    params = {"messages": ask, "tools": tools, "max_tokens": 48, "temperature": 0}
    completion = sdk(idle_after).chat.completions.create(
        model=model_name(idle_after), response_format={"type": "json_object"}, **params
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert isinstance(json.loads(choice.message.content), dict)  # the reviewer's echoed schema, read as a call before
    stream = sdk(idle_after).chat.completions.create(
        model=model_name(idle_after), response_format={"type": "json_object"}, stream=True, **params
    )
    chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
    assert not any(chunk.delta.tool_calls for chunk in chunks) and chunks[-1].finish_reason == "stop"
    assert "".join(chunk.delta.content or "" for chunk in chunks) == choice.message.content


def test_tool_choice_none_is_plain_text_and_auto_may_call(idle_after):
    none = complete(idle_after, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0)
    choice = none.json()["choices"][0]
    assert none.status_code == 200 and choice["message"]["content"] and "tool_calls" not in choice["message"]
    auto = complete(idle_after, messages=ASK_WEATHER, tools=TOOLS, max_tokens=64, temperature=0)
    choice = auto.json()["choices"][0]
    if choice["finish_reason"] == "tool_calls":  # the model chose to call: its call is read as any other
        assert choice["message"]["tool_calls"][0]["function"]["name"] in NAMES
    else:
        assert choice["message"]["content"] and "tool_calls" not in choice["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [TOOLS[0]] * 129}, "tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "required", "stop": ["}"]}, "stop"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"items": {}}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            "tools",
        ),
        (
            {"messages": [*ASK_WEATHER, {"role": "tool", "content": "x"}]},  # answers no call
            "messages[1].tool_call_id",
        ),
        (
            {"messages": [*ASK_WEATHER, {"role": "user", "content": "x", "tool_calls": [CALL]}]},
            "messages[1].tool_calls",
        ),
        (
            {"messages": [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}]},
            "messages[1].tool_calls[0].type",
        ),
        ({"functions": [TOOLS[0]["function"]]}, "functions"),
    ],
)
def test_bad_tools_are_a_bad_request_naming_the_parameter(idle_after, params, param):
    response = complete(idle_after, **{"messages": ASK_WEATHER, **params})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_parameters_the_grammar_cannot_enforce_are_refused_before_anything_is_generated(idle_after):
    before = scrape(idle_after)
    parameters = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    response = complete(idle_after, messages=ASK_WEATHER, tools=tools, tool_choice="required")
    assert_openai_error(response, 400, "invalid_request_error", "tools", "invalid_request_error")
    assert moved(before, scrape(idle_after), "chatapi_replies_started_total", mode="openai") == 0
    # Offered without forcing a call, the same tool is only text in the prompt: nothing to enforce.
    assert complete(idle_after, messages=ASK_WEATHER, tools=tools, max_tokens=4).status_code == 200


# The remote backend: a small upstream on 127.0.0.1 that streams what a test gives it


class FakeUpstream:
    """An OpenAI-compatible server of one model, "m": a reply streams `chunks`; `bodies` holds each streamed
    request's body. A request that does not stream (the remote backend measuring its chat template) gets a usage."""

    def __init__(self):
        self.chunks: list[dict] = []
        self.bodies: list[dict] = []
        handler = type("Handler", (FakeUpstreamHandler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeUpstreamHandler(BaseHTTPRequestHandler):
    fake: FakeUpstream

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, data: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            return self.answer(200, json.dumps({"object": "list", "data": [{"id": "m"}]}).encode())
        self.answer(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self.answer(404, b'{"error": "not found"}')
        if not body.get("stream"):
            usage = {"prompt_tokens": 5 * len(body["messages"]), "completion_tokens": 1}
            return self.answer(200, json.dumps({"choices": [{"message": {"content": "ok"}}], "usage": usage}).encode())
        self.fake.bodies.append(body)
        events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in self.fake.chunks) + "data: [DONE]\n\n"
        self.answer(200, events.encode(), "text/event-stream")


def deltas(*tool_calls: list, finish_reason: str = "tool_calls") -> list[dict]:
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": c}, "finish_reason": None}]} for c in tool_calls]
    return [*chunks, {"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}]


@pytest.fixture(scope="module")
def fake_upstream():
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def remote_server(app, database_url, fake_upstream, tmp_path_factory):
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": f"{fake_upstream.url}/v1"}
    server = Server(database_url, tmp_path_factory.mktemp("remote-tools") / "gunicorn.log", **settings)
    yield server.wait_until_up().url
    server.stop()


UPSTREAM_CALL = [
    [{"index": 0, "id": "up_1", "type": "function", "function": {"name": "get_time", "arguments": ""}}],
    [{"index": 0, "function": {"arguments": '{"city"'}}],
    [{"index": 0, "function": {"arguments": ': "Oslo"}'}}],
]


def test_tools_and_response_format_pass_through_to_the_model_server(remote_server, fake_upstream):
    fake_upstream.chunks = deltas(*UPSTREAM_CALL)
    tool_choice = {"type": "function", "function": {"name": "get_time"}}
    completion = sdk(remote_server).chat.completions.create(
        model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice=tool_choice, max_tokens=32
    )
    body = fake_upstream.bodies[-1]
    assert body["tools"] == TOOLS and body["tool_choice"] == tool_choice and "response_format" not in body
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"city": "Oslo"}
    # Streamed, and the call's messages in the next request go on to the upstream as OpenAI's.
    stream = sdk(remote_server).chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, stream=True)
    streamed = [c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls]
    assert streamed[0][0].function.name == "get_time"
    assert json.loads("".join(d[0].function.arguments or "" for d in streamed)) == {"city": "Oslo"}
    fake_upstream.chunks = [{"choices": [{"index": 0, "delta": {"content": "10:42."}, "finish_reason": "stop"}]}]
    messages = [
        *ASK_WEATHER,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "10:42"},
    ]
    answer = sdk(remote_server).chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content == "10:42." and answer.choices[0].finish_reason == "stop"
    sent = fake_upstream.bodies[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": call.function.arguments}
    assert sent[2] == {"role": "tool", "content": "10:42", "tool_call_id": call.id}
    # A schema is the upstream's to enforce, or to refuse: passed as given, even one the grammar here could not.
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 3}}}
    sdk(remote_server).chat.completions.create(model="m", messages=ASK_WEATHER, response_format=response_format)
    assert fake_upstream.bodies[-1]["response_format"] == response_format and "tools" not in fake_upstream.bodies[-1]


@pytest.mark.parametrize(
    "tool_calls",
    [
        [[{"index": 1, "function": {"name": "get_time", "arguments": "{}"}}]],  # index 1 before 0
        [[{"index": 0, "function": {"arguments": "{}"}}]],  # no name
        [[{"index": 0, "function": {"name": "get_time", "arguments": '{"city": '}}]],  # not JSON once complete
        [[{"index": 0, "function": {"name": "get_time", "arguments": "[]"}}]],  # not an object
        [[{"index": 0, "function": "get_time"}]],  # a function that is not an object
        [[{"index": 0, "function": {"name": "get_time", "arguments": '{"a": ' + "[" * 5_000 + "]" * 5_000 + "}"}}]],
    ],
)
def test_a_malformed_tool_call_from_the_model_server_is_an_error(remote_server, fake_upstream, tool_calls):
    fake_upstream.chunks = deltas(*tool_calls)
    stream = sdk(remote_server).chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, stream=True)
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            assert not (chunk.choices and chunk.choices[0].delta.tool_calls)  # nothing broken was passed on
    assert "malformed tool call" in str(raised.value)
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(remote_server).chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS)
    assert raised.value.status_code == 502 and "malformed tool call" in str(raised.value)


def test_the_chat_apis_json_format_goes_to_the_model_server_as_response_format(remote_server, fake_upstream, client):
    """?schema= and ?format=json on the chat API's stream routes: a remote model server gets them as OpenAI's
    response_format (it enforces them in place of our grammar)."""
    answer = {"index": 0, "delta": {"content": '{"city": "Oslo"}'}, "finish_reason": "stop"}
    fake_upstream.chunks = [{"choices": [answer]}]
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    chat_id = new_chat(remote_server, QUESTION)
    events = read_events(infer(remote_server, chat_id, urlencode({"schema": json.dumps(schema), "max_tokens": 8})))
    assert events[-1]["event"] == "done" and json.loads(events[-1]["data"]["message"]["message"]) == {"city": "Oslo"}
    sent = fake_upstream.bodies[-1]["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    replace = events[-1]["data"]["message"]["id"]
    json_object = {"format": "json", "max_tokens": 8, "replace": replace}
    events = read_events(infer(remote_server, chat_id, urlencode(json_object)))
    assert fake_upstream.bodies[-1]["response_format"] == {"type": "json_object"}
    replace = events[-1]["data"]["message"]["id"]
    read_events(infer(remote_server, chat_id, urlencode({"max_tokens": 8, "replace": replace})))
    assert "response_format" not in fake_upstream.bodies[-1]

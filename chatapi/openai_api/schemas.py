"""/v1's request, read and validated as OpenAI does: JSON types as they are (no "0.5" for a number), unknown fields
ignored, the parameters it cannot serve refused; a 400 in OpenAI's shape names the `param` at fault."""

import json

import marshmallow as ma
from flask import request
from flask_smorest import abort
from marshmallow import fields, validate

from ..openapi import json_object
from ..schemas import StorableString, message_length

MAX_STOPS = 4  # as OpenAI allows
# A stop string is a delimiter (a turn marker, a closing tag, a line or two): 500 characters is several lines of
# one. The stop scanner's cost a token does not grow with it; the cap bounds the text a reply holds back from its
# stream (up to a stop string's length) and what is sent on to a remote model server.
MAX_STOP_CHARS = 500
# Tools: as many functions as OpenAI allows, each named as OpenAI names them; a function's parameters as large as a
# schema the grammar takes (chatapi/llm/grammar.py), all of them together a few dozen pages of the prompt.
MAX_TOOLS = 128
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_DESCRIPTION_CHARS = 4_000
MAX_PARAMETERS_CHARS = 32_000
MAX_TOOLS_CHARS = 100_000
MAX_TOOL_CALLS = 128  # an assistant message's tool calls
MAX_TOOL_CALL_ID_CHARS = 256
MAX_RESPONSE_FORMAT_CHARS = 40_000  # a json_schema's schema is bounded by the grammar's own limit (32,000)


class Number(fields.Float):
    """A JSON number: not a numeric string, not a boolean."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str | bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Integer(fields.Integer):
    """A JSON integer: not a boolean either."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Boolean(fields.Boolean):
    """A JSON boolean: not "true" or 1."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def storable_text(value: str) -> str:
    """Text the model can read and the databases can store (no NUL, no lone surrogate), as long as a chat
    message may be."""
    value = StorableString().deserialize(value)
    message_length(value)
    return value


class Content(fields.Field):
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...}) joined by lines."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return storable_text(value)
        if not isinstance(value, list):
            raise ma.ValidationError("must be a string or a list of text parts")
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else None
                raise ma.ValidationError({index: [f"only text parts are supported, not {kind!r}"]})
            if not isinstance(part.get("text"), str):
                raise ma.ValidationError({index: {"text": ["must be a string"]}})
            try:
                texts.append(storable_text(part["text"]))
            except ma.ValidationError as error:
                raise ma.ValidationError({index: {"text": error.messages}}) from error
        return storable_text("\n".join(texts))


class Stop(fields.Field):
    """`stop`: a string or a list of at most MAX_STOPS strings of at most MAX_STOP_CHARS characters; always a list
    once read."""

    def _deserialize(self, value, attr, data, **kwargs):
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
            raise ma.ValidationError("must be a string or a list of strings")
        if len(stops) > MAX_STOPS:
            raise ma.ValidationError(f"at most {MAX_STOPS} stop strings")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ma.ValidationError(f"a stop string may be at most {MAX_STOP_CHARS} characters long")
        return stops


def json_chars(value) -> int:
    return len(json.dumps(value, ensure_ascii=False))


class FunctionCallSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    name = fields.String(required=True, validate=validate.Regexp(FUNCTION_NAME, error="must be a function's name"))
    arguments = fields.String(required=True, validate=message_length)


class ToolCallSchema(ma.Schema):
    """A call an assistant message made, as the client got it: {"id", "type": "function", "function": {...}}."""

    class Meta:
        unknown = ma.EXCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TOOL_CALL_ID_CHARS))
    type = fields.String(required=True, validate=validate.Equal("function"))
    function = fields.Nested(FunctionCallSchema, required=True)


class MessageSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # name, refusal, ...

    role = fields.String(required=True, validate=validate.OneOf(["system", "developer", "user", "assistant", "tool"]))
    content = Content(allow_none=True)  # required but for an assistant message that makes tool calls
    tool_calls = fields.List(
        fields.Nested(ToolCallSchema), allow_none=True, validate=validate.Length(max=MAX_TOOL_CALLS)
    )
    tool_call_id = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_TOOL_CALL_ID_CHARS))

    @ma.validates_schema
    def content_present(self, data, **kwargs):
        if data.get("tool_calls") and data.get("role") != "assistant":
            raise ma.ValidationError("only an assistant message makes tool calls", "tool_calls")
        if data.get("role") == "tool" and not data.get("tool_call_id"):
            raise ma.ValidationError("a tool message names the call it answers", "tool_call_id")
        if data.get("content") is None and data.get("role") != "assistant":
            raise ma.ValidationError("must be a string or a list of text parts", "content")
        if "content" not in data and not data.get("tool_calls"):
            raise ma.ValidationError("Missing data for required field.", "content")


class FunctionSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # strict, ...

    name = fields.String(required=True, validate=validate.Regexp(FUNCTION_NAME, error="must be a function's name"))
    description = fields.String(validate=validate.Length(max=MAX_DESCRIPTION_CHARS))
    parameters = fields.Dict(validate=lambda value: bounded(value, MAX_PARAMETERS_CHARS))


def bounded(value, max_chars: int) -> None:
    """A JSON value of at most `max_chars` characters."""
    if json_chars(value) > max_chars:
        raise ma.ValidationError(f"at most {max_chars} characters as JSON")


class ToolSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    type = fields.String(required=True, validate=validate.Equal("function", error="only function tools"))
    function = fields.Nested(FunctionSchema, required=True)


class ToolChoice(fields.Field):
    """`tool_choice`: "auto", "none", "required" or {"type": "function", "function": {"name"}}; kept as given."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value in ("auto", "none", "required"):
            return value
        named = isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict)
        if not (named and isinstance(value["function"].get("name"), str)):
            raise ma.ValidationError('must be "auto", "none", "required" or {"type": "function", "function": {"name"}}')
        return value




class StreamOptionsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    include_usage = Boolean(allow_none=True)


class ChatCompletionSchema(ma.Schema):
    """The parameters served; UNSUPPORTED lists those refused, every other field is ignored."""

    class Meta:
        unknown = ma.EXCLUDE  # user, metadata, store, presence_penalty, frequency_penalty, ...

    model = fields.String(required=True)
    messages = fields.List(fields.Nested(MessageSchema), required=True, validate=validate.Length(min=1))
    max_tokens = Integer(allow_none=True, validate=validate.Range(min=1))
    max_completion_tokens = Integer(allow_none=True, validate=validate.Range(min=1))
    temperature = Number(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = Number(allow_none=True, validate=validate.Range(min=0, max=1))
    seed = Integer(allow_none=True)
    stop = Stop(allow_none=True)
    n = Integer(allow_none=True)
    stream = Boolean(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    tools = fields.List(fields.Nested(ToolSchema), allow_none=True, validate=validate.Length(max=MAX_TOOLS))
    tool_choice = ToolChoice(allow_none=True)
    # An object, bounded; what it asks for is read by chatapi/llm/grammar.py.
    response_format = fields.Dict(allow_none=True, validate=lambda value: bounded(value, MAX_RESPONSE_FORMAT_CHARS))
    # Read only to refuse them (see UNSUPPORTED).
    functions = fields.Raw(allow_none=True)
    function_call = fields.Raw(allow_none=True)
    logprobs = fields.Raw(allow_none=True)
    top_logprobs = fields.Raw(allow_none=True)
    logit_bias = fields.Raw(allow_none=True)
    modalities = fields.Raw(allow_none=True)
    audio = fields.Raw(allow_none=True)


def harmless_function_call(value) -> bool:
    return value in (None, "none", "auto")


# Parameters that would change what the answer means, and the values of theirs that do not.
UNSUPPORTED = {
    "n": (lambda value: value in (None, 1), "only n=1 is supported"),
    "functions": (lambda value: not value, "functions are deprecated: give tools"),
    "function_call": (harmless_function_call, "function_call is deprecated: give tools and tool_choice"),
    "logprobs": (lambda value: value in (None, False), "logprobs are not supported"),
    "top_logprobs": (lambda value: value in (None, 0), "logprobs are not supported"),
    "logit_bias": (lambda value: not value, "logit_bias is not supported"),
    "modalities": (lambda value: value is None or value == ["text"], "only the text modality is supported"),
    "audio": (lambda value: value is None, "audio output is not supported"),
}


def param_path(messages: dict) -> tuple[str, str]:
    """The first field at fault in marshmallow's nested errors, as OpenAI names it (messages[0].content),
    and its message."""
    path = ""
    while isinstance(messages, dict):
        key, messages = next(iter(messages.items()))
        if key == "_schema":
            continue
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
    return path, messages[0] if isinstance(messages, list) else str(messages)


def bad_request(message: str, param: str | None = None, code: str | None = None):
    """A 400 in OpenAI's shape: the message, the parameter at fault and a code, when there are."""
    abort(400, message=message, param=param, code_name=code)


def load_request(schema: ma.Schema, unsupported: dict) -> dict:
    """The request's body read by `schema`, then the parameters `unsupported` refuses; 400 in OpenAI's shape naming
    the `param` at fault (415 for a body not sent as JSON)."""
    try:
        args = schema.load(json_object(request))
    except ma.ValidationError as error:
        param, message = param_path(error.messages)
        bad_request(f"{param}: {message}", param)
    for name, (allowed, message) in unsupported.items():
        if not allowed(args.get(name)):
            bad_request(message, name, "unsupported_parameter")
    return args


def read_completion_request() -> dict:
    """The request's parameters, validated; 400 in OpenAI's shape naming the `param` at fault (415 for a body
    not sent as JSON)."""
    args = load_request(ChatCompletionSchema(), UNSUPPORTED)
    if not any(m["role"] == "user" for m in args["messages"]):
        bad_request("messages must hold a user message", "messages")
    tools = args.get("tools") or []
    if json_chars(tools) > MAX_TOOLS_CHARS:
        bad_request(f"the tools may take at most {MAX_TOOLS_CHARS} characters as JSON", "tools")
    names = [tool["function"]["name"] for tool in tools]
    if len(set(names)) < len(names):
        bad_request("the tools' names must differ", "tools")
    choice = args.get("tool_choice")
    if choice == "required" and not tools:
        bad_request('tool_choice "required" needs tools', "tool_choice")
    if isinstance(choice, dict) and choice["function"]["name"] not in names:
        bad_request(f"tool_choice names no tool given: {choice['function']['name']!r}", "tool_choice")
    return args

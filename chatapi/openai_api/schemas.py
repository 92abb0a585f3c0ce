"""/v1's request, read and validated as OpenAI does: JSON types as they are (no "0.5" for a number), unknown fields
ignored, the parameters it cannot serve refused; a 400 in OpenAI's shape names the `param` at fault."""

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


class MessageSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # name, refusal, ...

    role = fields.String(required=True, validate=validate.OneOf(["system", "developer", "user", "assistant"]))
    content = Content(required=True, allow_none=True)
    tool_calls = fields.Raw(allow_none=True)

    @ma.validates_schema
    def content_present(self, data, **kwargs):
        if data.get("tool_calls"):
            raise ma.ValidationError("tool calls are not supported", "tool_calls")
        if data.get("content") is None and data.get("role") != "assistant":
            raise ma.ValidationError("must be a string or a list of text parts", "content")


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
    # Read only to refuse them (see UNSUPPORTED).
    tools = fields.Raw(allow_none=True)
    tool_choice = fields.Raw(allow_none=True)
    functions = fields.Raw(allow_none=True)
    function_call = fields.Raw(allow_none=True)
    response_format = fields.Raw(allow_none=True)
    logprobs = fields.Raw(allow_none=True)
    top_logprobs = fields.Raw(allow_none=True)
    logit_bias = fields.Raw(allow_none=True)
    modalities = fields.Raw(allow_none=True)
    audio = fields.Raw(allow_none=True)


def harmless_tool_choice(value) -> bool:
    return value in (None, "none", "auto")


# Parameters that would change what the answer means, and the values of theirs that do not.
UNSUPPORTED = {
    "n": (lambda value: value in (None, 1), "only n=1 is supported"),
    "tools": (lambda value: not value, "tools are not supported"),
    "functions": (lambda value: not value, "functions are not supported"),
    "tool_choice": (harmless_tool_choice, "tool calls are not supported"),
    "function_call": (harmless_tool_choice, "function calls are not supported"),
    "response_format": (
        lambda value: value is None or value == {"type": "text"},
        "only the text response format is supported",
    ),
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


def read_completion_request() -> dict:
    """The request's parameters, validated; 400 in OpenAI's shape naming the `param` at fault (415 for a body
    not sent as JSON)."""
    try:
        args = ChatCompletionSchema().load(json_object(request))
    except ma.ValidationError as error:
        param, message = param_path(error.messages)
        bad_request(f"{param}: {message}", param)
    for name, (allowed, message) in UNSUPPORTED.items():
        if not allowed(args.get(name)):
            bad_request(message, name, "unsupported_parameter")
    if not any(m["role"] == "user" for m in args["messages"]):
        bad_request("messages must hold a user message", "messages")
    return args

"""The API document's shared parts: the error body, the headers of some errors, and event streams' JSON data.

flask-smorest builds the rest from the routes' schemas; chatapi/blueprint.py adds the errors that every
operation can answer, chatapi/auth.py the security schemes when keys are on.
"""

import flask_smorest
import marshmallow as ma
from flask import Flask
from marshmallow import fields

# Headers that come with some errors: how to authenticate, and when to try again.
ERROR_HEADERS = {
    "UNAUTHORIZED": {
        "WWW-Authenticate": {"description": 'Bearer realm="chatapi"', "schema": {"type": "string"}, "required": True},
    },
    "TOO_MANY_REQUESTS": {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}, "required": True},
    },
    "SERVICE_UNAVAILABLE": {
        "Retry-After": {"description": "seconds to wait (the database)", "schema": {"type": "integer"}},
    },
}


class ErrorSchema(ma.Schema):
    """Every error's body, as chatapi/errors.py writes it."""

    code = fields.Integer(required=True, metadata={"description": "the HTTP status code"})
    status = fields.String(required=True, metadata={"description": "its name, e.g. Not Found"})
    message = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "validation failures (422): the messages of each field"},
    )


class JSONText(fields.String):
    """Text that holds a JSON document of the given schema: the data line of a Server-Sent Event."""

    def __init__(self, document: type[ma.Schema], **kwargs):
        super().__init__(**kwargs)
        self.document = document


def json_text2properties(self, field: fields.Field, **kwargs) -> dict:
    """JSONText in the document: contentMediaType and contentSchema (JSON Schema's keywords for text that holds
    a document, which OpenAPI 3.2 uses for event streams), so that clients and fuzzers can check each event."""
    if isinstance(field, JSONText):
        return {"contentMediaType": "application/json", "contentSchema": self.resolve_nested_schema(field.document)}
    return {}


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema
    # No catch-all `default` response: each operation lists the errors it can answer, so that a client (or a
    # fuzzer checking responses against the document) can tell an undocumented status.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, *, spec_kwargs: dict | None = None) -> None:
        super().init_app(app, spec_kwargs=spec_kwargs)
        self.ma_plugin.converter.add_attribute_function(json_text2properties)
        for response, headers in ERROR_HEADERS.items():
            self.spec.components.responses_lazy[response]["headers"] = headers

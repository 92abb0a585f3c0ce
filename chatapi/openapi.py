"""The API document's shared parts: the error body, how clients authenticate, and the headers of the errors.

flask-smorest builds the rest from the routes' schemas; chatapi/blueprint.py adds the errors that every
operation can answer.
"""

import flask_smorest
import marshmallow as ma
from flask import Flask
from marshmallow import fields

# The page's session cookie (POST /session), accepted like the Authorization header.
SESSION_COOKIE = "chatapi_session"

SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "A key from CHATAPI_API_KEYS or CHATAPI_API_KEYS_FILE. Without keys configured the server "
        "asks for none (it then serves a loopback address only).",
    },
    "cookieAuth": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The signed session cookie that POST /session sets, for the page and EventSource.",
    },
}

# Headers that come with some errors: how to authenticate, and when to try again.
ERROR_HEADERS = {
    "UNAUTHORIZED": {
        "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}, "required": True},
    },
    "TOO_MANY_REQUESTS": {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}, "required": True},
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
        # Every operation asks for a key unless it says otherwise (GET /health: `security: []`).
        security = [{name: []} for name in SECURITY_SCHEMES]
        super().init_app(app, spec_kwargs={"security": security, **(spec_kwargs or {})})
        self.ma_plugin.converter.add_attribute_function(json_text2properties)
        for name, scheme in SECURITY_SCHEMES.items():
            self.spec.components.security_scheme(name, scheme)
        for response, headers in ERROR_HEADERS.items():
            self.spec.components.responses_lazy[response]["headers"] = headers

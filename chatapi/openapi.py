"""flask-smorest as the routes use it: the Api with the document's shared parts (the error body, the headers of
some errors, event streams' JSON data), and the Blueprint every route module uses, with a stricter JSON body
parser and the errors that any operation can answer added to its document.

flask-smorest builds the rest of the document from the routes' schemas; chatapi/auth.py adds the security schemes
when keys are on.
"""

import json

import flask_smorest
import marshmallow as ma
from flask import Flask
from flask_smorest import abort
from marshmallow import fields
from webargs.flaskparser import FlaskParser

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


def json_object(req) -> dict:
    """The request's body: a JSON object, sent as application/json (or another +json type). Any other type is a
    415: a web page can send text/plain or a form to any server without asking first, JSON only after a CORS
    preflight. A body that is not JSON, or not a JSON object, is a 400."""
    if not req.is_json:
        abort(415, message="send the request body as JSON, with Content-Type: application/json")
    try:
        body = json.loads(req.get_data(cache=True))
    except (ValueError, UnicodeDecodeError):
        abort(400, message="request body must be JSON")
    except RecursionError:  # a valid body too, but nested deeper than any request needs
        abort(400, message="request body is nested too deeply")
    if not isinstance(body, dict):
        abort(400, message="request body must be a JSON object")
    return body


class JSONBodyParser(FlaskParser):
    """Reads the body with json_object(): a 415, or a 400 rather than a field error."""

    def load_json(self, req, schema):
        return json_object(req)


def common_errors(doc: dict) -> dict:
    """The errors an operation can answer whatever it does, by status: a missing or wrong key (once accounts are
    on, unless the operation asks for none), a foreign Host or a request from another site
    (chatapi/guard.py), a body that is not a JSON object, too large or not sent as JSON, a URL too long
    (gunicorn's limit), too many requests, and a database that cannot be reached."""
    errors = {}
    if doc.get("security") != []:
        errors[401] = "UNAUTHORIZED"
    errors[403] = "FORBIDDEN"
    if "requestBody" in doc:
        errors[400] = "BAD_REQUEST"
        errors[413] = "REQUEST_ENTITY_TOO_LARGE"
        errors[415] = "UNSUPPORTED_MEDIA_TYPE"
    errors[414] = "REQUEST_URI_TOO_LONG"
    errors[429] = "TOO_MANY_REQUESTS"
    errors[503] = "SERVICE_UNAVAILABLE"
    return errors


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's, reading bodies with json_object() and documenting common_errors() on every operation."""

    ARGUMENTS_PARSER = JSONBodyParser()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_common_errors_doc)

    @staticmethod
    def _prepare_common_errors_doc(doc: dict, doc_info: dict, *, app, **kwargs) -> dict:
        """Add common_errors() to the operation's responses, where it does not document them itself."""
        manual = doc_info.get("manual_doc", {})
        responses = doc.setdefault("responses", {})
        documented = {str(status) for status in [*responses, *manual.get("responses", {})]}
        for status, response in common_errors({**doc, **manual}).items():
            if str(status) not in documented:
                responses[status] = response
        return doc

"""Every error becomes the same JSON body: {code, status, message[, errors]}; on the OpenAI-compatible routes
(/v1, chatapi/openai_api/) OpenAI's instead: {"error": {message, type, param, code}}, so that its clients
read it."""

from flask import Flask, current_app, request
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import Conflict, HTTPException, InternalServerError, ServiceUnavailable

from .disk import is_disk_full
from .extensions import db
from .llm.catalog import UnknownModel
from .llm.queue import ModelNotReady, QueueFull
from .llm.remote import UpstreamError

# OpenAI's error `type` by status, where the route gives none; its `code` for some.
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
OPENAI_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}

# Seconds a client should wait before trying again when the database is unavailable (a restart takes a few).
DATABASE_RETRY_AFTER = "5"
QUEUE_RETRY_AFTER = "5"  # ...and when the model's queue is full


def field_errors(messages: dict) -> dict:
    """webargs nests errors by location ({"json": {"name": [...]}}), marshmallow by nested field and list
    index; clients want them by field, nested ones by their path ({"conversations.3.role": [...]})."""
    errors = {}
    for location_errors in messages.values():
        if isinstance(location_errors, dict):
            errors.update(by_path(location_errors))
        else:
            errors.setdefault("_schema", []).extend(location_errors)
    return errors


def by_path(errors: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in errors.items():
        if isinstance(value, dict):
            flat.update(by_path(value, f"{prefix}{key}."))
        elif key == "_schema" and prefix:  # a nested object's own error (not an object at all): its path
            flat[prefix[:-1]] = value
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def error_body(error: HTTPException) -> tuple[dict, int, dict]:
    """The JSON body, status and headers for an HTTP error."""
    data = getattr(error, "data", None) or {}
    body = {"code": error.code, "status": error.name, "message": data.get("message") or error.description}
    if "messages" in data:
        body["errors"] = field_errors(data["messages"])
        body["message"] = "invalid " + ", ".join(sorted(body["errors"]))
    headers = dict(data.get("headers") or {})
    if getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return body, error.code, headers


def is_openai_route() -> bool:
    return request.path == "/v1" or request.path.startswith("/v1/")


def openai_error(body: dict, status: int, data: dict) -> dict:
    """OpenAI's error body; a route may name the `param` at fault and the error's `type` and `code`
    (flask_smorest.abort(400, message=..., param="n", code_name="unsupported_parameter"))."""
    if status >= 500:
        kind = "server_error"
    else:
        kind = OPENAI_TYPES.get(status, "invalid_request_error")
    return {
        "error": {
            "message": body["message"],
            "type": data.get("type") or kind,
            "param": data.get("param"),
            "code": data.get("code_name") or OPENAI_CODES.get(status),
        }
    }


def error_response(error: HTTPException, message: str | None = None, headers: dict | None = None):
    """The error's response in the shape its route speaks; `message` and `headers` replace or add to the
    error's own."""
    body, status, own_headers = error_body(error)
    if message:
        body["message"] = message
    own_headers.update(headers or {})
    if is_openai_route():
        body = openai_error(body, status, getattr(error, "data", None) or {})
    return body, status, own_headers


def handle_http_exception(error: HTTPException):
    return error_response(error)


def handle_database_unavailable(error: OperationalError):
    """A database that cannot be reached (stopped, restarting) or whose disk is full is a 503 to retry later, not a
    crash. The driver's words (SQL, parameters, the server's address) go to the log only."""
    db.session.rollback()
    current_app.logger.error("database unavailable: %s", error)
    message = "the database's disk is full: nothing was saved" if is_disk_full(error) else "the database is unavailable"
    return error_response(ServiceUnavailable(message), headers={"Retry-After": DATABASE_RETRY_AFTER})


def handle_redis_unavailable(error: RedisError):
    """Redis (CHATAPI_REDIS_URL) that cannot be reached: replies can be neither started nor found for now. Why
    (its address among it) goes to the log only."""
    current_app.logger.error("Redis unavailable: %s", error)
    return error_response(ServiceUnavailable("Redis is unavailable"), headers={"Retry-After": "5"})


def unavailable(message: str, **data) -> ServiceUnavailable:
    """A 503 as flask_smorest.abort makes it: `data` may hold headers and OpenAI's error code (code_name)."""
    error = ServiceUnavailable()
    error.data = {"message": message, **data}
    return error


def handle_model_not_ready(error: ModelNotReady):
    """A reply or the model's card asked for while the model loads, or after it failed to load: why it failed (its
    words name paths) is in the log and keyed /health."""
    return error_response(unavailable(str(error), code_name="model_not_ready"))


def handle_upstream_error(error: UpstreamError):
    """The remote model server cannot say which models it has (GET /models, a chat's model checked against its list):
    where and why go to the log, the client is told what."""
    current_app.logger.error("%s", error)
    return error_response(unavailable(error.public, code_name="model_not_ready"))


def handle_unknown_model(error: UnknownModel):
    """A model that was there when the request was checked and removed before its reply started."""
    return error_response(Conflict(str(error)))


def handle_queue_full(error: QueueFull):
    """A reply asked for while the model's queue holds CHATAPI_QUEUE_SIZE: try again in a few seconds."""
    headers = {"Retry-After": QUEUE_RETRY_AFTER}
    return error_response(unavailable("the model's queue is full", headers=headers, code_name="queue_full"))


def handle_unexpected(error: Exception):
    """Anything else is a bug: roll back, log it, answer JSON."""
    db.session.rollback()
    current_app.logger.exception("unhandled error")
    return error_response(InternalServerError("internal server error"))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(OperationalError, handle_database_unavailable)
    app.register_error_handler(RedisError, handle_redis_unavailable)
    app.register_error_handler(ModelNotReady, handle_model_not_ready)
    app.register_error_handler(QueueFull, handle_queue_full)
    app.register_error_handler(UpstreamError, handle_upstream_error)
    app.register_error_handler(UnknownModel, handle_unknown_model)
    app.register_error_handler(Exception, handle_unexpected)

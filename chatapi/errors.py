"""Every error becomes the same JSON body: {code, status, message[, errors]}."""

from flask import Flask, current_app
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from .extensions import db

# Seconds a client should wait before trying again when the database is unavailable (a restart takes a few).
DATABASE_RETRY_AFTER = "5"


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


def handle_http_exception(error: HTTPException):
    return error_body(error)


def handle_database_unavailable(error: OperationalError):
    """A database that cannot be reached (stopped, restarting) is a 503 to retry later, not a crash."""
    db.session.rollback()
    current_app.logger.error("database unavailable: %s", error)
    body, code, headers = error_body(ServiceUnavailable("the database is unavailable"))
    return body, code, {**headers, "Retry-After": DATABASE_RETRY_AFTER}


def handle_unexpected(error: Exception):
    """Anything else is a bug: roll back, log it, answer JSON."""
    db.session.rollback()
    current_app.logger.exception("unhandled error")
    return error_body(InternalServerError("internal server error"))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(OperationalError, handle_database_unavailable)
    app.register_error_handler(Exception, handle_unexpected)

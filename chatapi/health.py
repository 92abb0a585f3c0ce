"""GET /health: is the server able to serve?"""

import logging

import marshmallow as ma
import sqlalchemy as sa
from flask import current_app
from marshmallow import fields
from sqlalchemy.exc import SQLAlchemyError

from . import auth, replies
from .errors import DATABASE_RETRY_AFTER
from .extensions import db
from .openapi import Blueprint


class RepliesHealthSchema(ma.Schema):
    running = fields.Integer(metadata={"description": "replies being generated now"})
    waiting = fields.Integer(metadata={"description": "replies queued or being prepared"})


class LoadedModelSchema(ma.Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, metadata={"description": "loading, ok or unloading"})
    load_seconds = fields.Float(required=True, allow_none=True, metadata={"description": "how long its load took"})


class ModelHealthSchema(ma.Schema):
    status = fields.String(metadata={"description": "loading, ok or failed; unavailable (a remote model server)"})
    backend = fields.String(metadata={"description": "openai: a remote model server (CHATAPI_LLM_BACKEND)"})
    url = fields.String(metadata={"description": "the remote model server's base URL"})
    name = fields.String(metadata={"description": "the default model's id"})
    n_ctx = fields.Integer()
    path = fields.String()
    loaded = fields.List(fields.Nested(LoadedModelSchema), metadata={"description": "the models in memory"})
    reason = fields.String()
    replies = fields.Nested(RepliesHealthSchema)


class HealthSchema(ma.Schema):
    """With API keys on, a request without a valid key or session gets status, database, redis and the model's
    status only: the rest names addresses, paths and the drivers' words."""

    status = fields.String(required=True, metadata={"description": "ok, or unavailable"})
    database = fields.String(
        required=True, metadata={"description": "ok, error (cannot be reached), or disk full (writes fail)"}
    )
    redis = fields.String(metadata={"description": "with CHATAPI_REDIS_URL: ok, or unreachable"})
    model = fields.Nested(ModelHealthSchema)
    reason = fields.String(
        metadata={"description": "why the server is unavailable (with API keys on, to keyed requests only)"}
    )


bp = Blueprint("health", __name__, description="Health")
log = logging.getLogger(__name__)

RETRY_AFTER = {"description": "seconds to wait, when the database is down", "schema": {"type": "integer"}}
last_reason: str | None = None  # logged once each, not at every probe of a monitor


@bp.route("/health", methods=["GET"])
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, headers={"Retry-After": RETRY_AFTER})
@bp.doc(security=[])  # open to monitors when API keys are on
def health():
    """Report the database, the model and (when replies are shared through it) Redis; 503 while any cannot serve.
    With API keys on, a request without a valid key or session is told only which part cannot serve: the reason
    (driver messages, addresses, paths) and the model's details go to keyed requests and to the log."""
    global last_reason
    body, status, headers = report()
    if body.get("reason") != last_reason:
        last_reason = body.get("reason")
        if last_reason:
            log.warning("/health: unavailable: %s", last_reason)
    if not auth.may_see_details():
        body = {
            "status": body["status"],
            **{part: body[part] for part in ("database", "redis") if part in body},
            "model": {"status": body["model"]["status"]},
        }
    return body, status, headers


def report() -> tuple[dict, int, dict]:
    """The whole report: the database, then Redis, then the model; the reason names the first that cannot serve."""
    service = replies.service()
    model = service.describe()
    try:
        db.session.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        db.session.rollback()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        body = {"status": "unavailable", "database": "error", "model": model, "reason": reason}
        return body, 503, {"Retry-After": DATABASE_RETRY_AFTER}
    disk_problem = current_app.extensions["disk"].problem()
    if disk_problem:  # every write fails, the reply's save too
        return {"status": "unavailable", "database": "disk full", "model": model, "reason": disk_problem}, 503, {}
    body = {"database": "ok", "model": model}
    if service.board is not None:
        redis_problem = service.redis_problem()
        body["redis"] = "unreachable" if redis_problem else "ok"
        if redis_problem:  # no reply can start or be found
            return {"status": "unavailable", **body, "reason": redis_problem}, 503, {}
    if model["status"] != "ok":
        reason = f"model {model['status']}" + (f": {model['reason']}" if "reason" in model else "")
        return {"status": "unavailable", **body, "reason": reason}, 503, {}
    return {"status": "ok", **body}, 200, {}

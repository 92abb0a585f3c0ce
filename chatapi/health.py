"""GET /health: is the server able to serve?"""

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from . import replies
from .blueprint import Blueprint
from .errors import DATABASE_RETRY_AFTER
from .extensions import db
from .schemas import HealthSchema

bp = Blueprint("health", __name__, description="Health")

RETRY_AFTER = {"description": "seconds to wait, when the database is down", "schema": {"type": "integer"}}


@bp.route("/health", methods=["GET"])
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, headers={"Retry-After": RETRY_AFTER})
@bp.doc(security=[])  # open to monitors when API keys are on
def health():
    """Report the database, the model and (when replies are shared through it) Redis; 503 with the reason while
    any cannot serve."""
    service = replies.service()
    model = service.describe()
    try:
        db.session.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        db.session.rollback()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        body = {"status": "unavailable", "database": "error", "model": model, "reason": reason}
        return body, 503, {"Retry-After": DATABASE_RETRY_AFTER}
    body = {"database": "ok", "model": model}
    if service.board is not None:
        redis_problem = service.redis_problem()
        body["redis"] = "unreachable" if redis_problem else "ok"
        if redis_problem:  # no reply can start or be found
            return {"status": "unavailable", **body, "reason": redis_problem}, 503
    if model["status"] != "ok":
        reason = f"model {model['status']}" + (f": {model['reason']}" if "reason" in model else "")
        return {"status": "unavailable", **body, "reason": reason}, 503
    return {"status": "ok", **body}

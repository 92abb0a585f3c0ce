"""GET /health: is the server able to serve?"""

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from . import replies
from .blueprint import Blueprint
from .extensions import db
from .schemas import HealthSchema

bp = Blueprint("health", __name__, description="Health")


@bp.route("/health", methods=["GET"])
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema)
@bp.doc(security=[])  # open to load balancers and monitors, keys or not
def health():
    """Report the database and the model; 503 with the reason while either cannot serve."""
    model = replies.service().describe()
    try:
        db.session.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        db.session.rollback()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return {"status": "unavailable", "database": "error", "model": model, "reason": reason}, 503
    if model["status"] != "ok":
        reason = f"model {model['status']}" + (f": {model['reason']}" if "reason" in model else "")
        return {"status": "unavailable", "database": "ok", "model": model, "reason": reason}, 503
    return {"status": "ok", "database": "ok", "model": model}

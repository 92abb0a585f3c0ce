"""Usage per person: the tokens in (prompt) and out (completion) and the replies of each person per UTC day (table
`usage`), recorded as replies end, for the chat API and /v1 alike; the optional daily quota CHATAPI_DAILY_TOKENS;
and the routes that show it, `GET /me/usage` and, for admins, `GET /users/<user_id>/usage`.

Nothing is recorded while accounts are off (nobody is asking: `g.person` is None). A reply's counts come with its
`done` event (chatapi/llm/queue.py), which the server's hub delivers: the write is handed to a greenlet of its own,
and a write that fails is logged, never felt by the reply. A reply that ends in an `error` event has no counts and
is not recorded.
"""

import logging
import math
from datetime import UTC, date, datetime, time, timedelta

import gevent
import marshmallow as ma
import sqlalchemy as sa
from flask import Flask, current_app
from flask_smorest import abort
from marshmallow import fields, validate
from sqlalchemy.dialects import postgresql, sqlite

from . import auth, metrics, people
from .extensions import db
from .llm.reply import ReplyEvents
from .openapi import Blueprint
from .people import Person, Usage
from .schemas import TIMESTAMP_FORMAT, RequestSchema, Timestamp

log = logging.getLogger(__name__)
INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # the two dialects' upserts (ON CONFLICT)

bp = Blueprint("usage", __name__, description="Usage: tokens per person per day, and the daily quota")


# Recording


def utc_now() -> datetime:
    return datetime.now(UTC)


def next_midnight(now: datetime) -> datetime:
    """When the UTC day of `now` ends: the quota's reset."""
    return datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=UTC)


def reply_events(person: Person | None) -> ReplyEvents:
    """The callback through which a reply this app starts for `person` reports its events: the metrics, and as it
    ends (`done`), the person's usage. Call it in the request that starts the reply: the person is the one asking
    now."""
    counted = metrics.reply_events(person)
    if person is None:
        return counted
    app = current_app._get_current_object()

    def on_event(reply, event: str | None, data: dict) -> None:
        counted(reply, event, data)
        if event == "done":
            # In the server's hub, which must never wait for the database.
            gevent.spawn(record, app, person.id, utc_now().date(), data["usage"])

    return on_event


def record(app: Flask, user_id: int, day: date, usage: dict) -> None:
    """Add a reply's counts to its person's day; a count a remote model server did not report (None) adds 0, the
    reply is counted all the same. Logs, never raises: the reply has ended whatever happens here."""
    with app.app_context():
        try:
            add(user_id, day, usage["prompt_tokens"] or 0, usage["completion_tokens"] or 0)
            db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("the usage of a reply (person %s, %s) could not be recorded", user_id, day)
        finally:
            db.session.remove()


def add(user_id: int, day: date, prompt_tokens: int, completion_tokens: int) -> None:
    """One reply more on the person's day: an upsert, so that replies ending at once in several processes all count."""
    insert = INSERTS[db.session.get_bind().dialect.name]
    row = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "replies": 1}
    statement = insert(Usage).values(user_id=user_id, day=day, **row)
    added = {name: getattr(Usage, name) + getattr(statement.excluded, name) for name in row}
    db.session.execute(statement.on_conflict_do_update(index_elements=[Usage.user_id, Usage.day], set_=added))


# The quota


def daily_tokens() -> int | None:
    """CHATAPI_DAILY_TOKENS, or None when there is no quota (0, or less)."""
    quota = current_app.config["CHATAPI_DAILY_TOKENS"]
    return quota if quota > 0 else None


def tokens_on(user_id: int, day: date) -> int:
    """The prompt and completion tokens the person's replies that ended on the day counted."""
    row = db.session.get(Usage, (user_id, day))
    return row.prompt_tokens + row.completion_tokens if row else 0


def check_quota(person: Person | None) -> None:
    """429 when the person's replies have used CHATAPI_DAILY_TOKENS today (UTC), with Retry-After the seconds until
    midnight UTC, when it resets. Checked as a reply starts: the reply that crosses it ends as asked."""
    quota = daily_tokens()
    if person is None or quota is None:
        return
    now = utc_now()
    used = tokens_on(person.id, now.date())
    if used < quota:
        return
    resets_at = next_midnight(now)
    abort(
        429,
        message=f"daily token quota used: {used} of {quota} tokens today (UTC); it resets at "
        f"{resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        headers={"Retry-After": str(max(1, math.ceil((resets_at - now).total_seconds())))},
        type="insufficient_quota",  # OpenAI's words for it (/v1's error shape)
        code_name="insufficient_quota",
    )


# Routes


class UsageQuerySchema(RequestSchema):
    days = fields.Integer(
        load_default=30,
        validate=validate.Range(min=1, max=366),
        metadata={"description": "how many days back, today (UTC) included"},
    )


class DailyUsageSchema(ma.Schema):
    day = fields.Date(required=True, metadata={"description": "the UTC day (YYYY-MM-DD) the replies ended"})
    prompt_tokens = fields.Integer(required=True, metadata={"description": "tokens read: the prompts"})
    completion_tokens = fields.Integer(required=True, metadata={"description": "tokens written: the replies"})
    replies = fields.Integer(required=True)


class PersonUsageSchema(ma.Schema):
    daily_tokens = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "CHATAPI_DAILY_TOKENS: prompt and completion tokens a day; null: no quota"},
    )
    resets_at = Timestamp(required=True, metadata={"description": "the next midnight UTC", **TIMESTAMP_FORMAT})
    days = fields.List(
        fields.Nested(DailyUsageSchema),
        required=True,
        metadata={"description": "newest first; days without a reply are left out"},
    )


def usage_of(user_id: int, days: int) -> dict:
    """The person's usage over the last `days` UTC days, today included."""
    now = utc_now()
    since = now.date() - timedelta(days=days - 1)
    query = sa.select(Usage).where(Usage.user_id == user_id, Usage.day >= since).order_by(Usage.day.desc())
    return {
        "daily_tokens": daily_tokens(),
        "resets_at": next_midnight(now).replace(tzinfo=None),
        "days": db.session.scalars(query).all(),
    }


@bp.route("/me/usage", methods=["GET"])
@bp.arguments(UsageQuerySchema, location="query")
@bp.response(200, PersonUsageSchema)
@bp.alt_response(404, response="NOT_FOUND", description="Accounts are off.")
def get_my_usage(args):
    """Your tokens and replies per UTC day, newest first, and the daily quota."""
    return usage_of(auth.person_or_404().id, args["days"])


@bp.route("/users/<int:user_id>/usage", methods=["GET"])
@bp.arguments(UsageQuerySchema, location="query")
@bp.response(200, PersonUsageSchema)
@bp.alt_response(403, response="FORBIDDEN", description="You are not an admin.")
@bp.alt_response(404, response="NOT_FOUND", description="No such person, or accounts are off.")
def get_user_usage(args, user_id):
    """Admins: a person's tokens and replies per UTC day, newest first, and the daily quota."""
    if not auth.person_or_404().admin:
        abort(403, message="only admins see other people's usage")
    people.user_or_404(user_id)
    return usage_of(user_id, args["days"])

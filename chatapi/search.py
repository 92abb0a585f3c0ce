"""GET /search: every message and chat name of the asker's, found by their words (the index of
chatapi/search_index.py), each hit with a snippet and the matched words' places (chatapi/snippets.py)."""

import marshmallow as ma
import sqlalchemy as sa
from marshmallow import fields, validate

from . import search_index
from .extensions import db
from .models import Chat, Conversation, owned, owner_id
from .openapi import Blueprint
from .schemas import TIMESTAMP_FORMAT, RequestSchema, StorableString, Timestamp
from .snippets import MAX_TERMS, Query, snippet

bp = Blueprint("search", __name__, description="Search: every message and chat name, by their words")

MAX_QUERY_CHARS = 500
MAX_OFFSET = 10_000
TOTAL_COUNT = {"description": "hits in all", "schema": {"type": "integer"}, "required": True}
NAME, MESSAGE = 0, 1  # the kinds of hit, in the order they are listed


class SearchQuerySchema(RequestSchema):
    q = StorableString(
        required=True,
        validate=validate.Length(min=1, max=MAX_QUERY_CHARS),
        metadata={"description": 'words (all must occur, in any order) and "quoted phrases"'},
    )
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))

    @ma.post_load
    def parse(self, data, **kwargs):
        query = Query.parse(data["q"])
        if not query.phrases:
            raise ma.ValidationError({"q": ["Give at least one word (letters or digits)."]})
        if len(query.phrases) > MAX_TERMS:
            raise ma.ValidationError({"q": [f"At most {MAX_TERMS} words and phrases."]})
        return {**data, "query": query}


class HighlightSchema(ma.Schema):
    start = fields.Integer(required=True, metadata={"description": "the first character, counted in code points"})
    end = fields.Integer(required=True, metadata={"description": "after the last character"})


class SearchHitSchema(ma.Schema):
    chat_id = fields.UUID(required=True)
    chat_name = fields.String(required=True)
    conversation_id = fields.UUID(
        required=True, allow_none=True, metadata={"description": "the message found; null when the chat's name was"}
    )
    role = fields.String(required=True, allow_none=True, metadata={"description": "the message's; null for a name"})
    created_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    snippet = fields.String(
        required=True, metadata={"description": "plain text: the message around the first match, or the chat's name"}
    )
    highlights = fields.List(
        fields.Nested(HighlightSchema),
        required=True,
        metadata={"description": "where the matched words are in `snippet`, in order"},
    )


@bp.route("/search", methods=["GET"])
@bp.arguments(SearchQuerySchema, location="query")
@bp.response(200, SearchHitSchema(many=True), headers={"X-Total-Count": TOTAL_COUNT})
def search(args):
    """Find the asker's chats whose name, and messages whose text, hold every word and phrase of q: chat names
    first, then messages, each by relevance, then newest first."""
    query = args["query"]
    # Ranked by their keys alone; only the page's rows are read whole.
    ranked = sa.union_all(*(ranked_matches(kind, query) for kind in (NAME, MESSAGE))).subquery()
    order = (ranked.c.kind, ranked.c.score, ranked.c.recency.desc(), ranked.c.id.desc())
    # The total rides on the page's rows (one pass over the matches: on PostgreSQL a phrase's rows are read from
    # the table to check the words' places, and a second statement read them all again); past the end, a count.
    total = sa.func.count().over().label("total")
    page = sa.select(ranked.c.kind, ranked.c.id, total).order_by(*order).offset(args["offset"]).limit(args["limit"])
    rows = db.session.execute(page).all()
    counts = (matches(kind, query).with_only_columns(sa.func.count()) for kind in (NAME, MESSAGE))
    total = rows[0].total if rows else sum(db.session.scalar(count) for count in counts)
    return hits([(row.kind, row.id) for row in rows], query), 200, {"X-Total-Count": str(total)}


def matches(kind: int, query: Query) -> sa.Select:
    """The asker's chats whose name (NAME), or messages whose text (MESSAGE), match: a select to give columns."""
    chats, conversations = Chat.__table__, Conversation.__table__
    table = conversations if kind == MESSAGE else chats
    source, condition = index_match(table, query)
    found = sa.select(table.c.id).select_from(source).where(condition)
    if kind == NAME:
        return owned(found)
    if owner_id() is None:  # accounts off: every chat is the asker's, and no chat need be read
        return found
    # The asker's chats by their owner's index: a rare word's messages are never joined with every chat (on
    # PostgreSQL a join made it hash all 100,000 chats: docs/benchmarks.md).
    return found.where(conversations.c.chat_id.in_(owned(sa.select(chats.c.id))))


def ranked_matches(kind: int, query: Query) -> sa.Select:
    """The matches' keys: their kind and id, their score (lower is more relevant) and when they were made."""
    chats, conversations = Chat.__table__, Conversation.__table__
    table = conversations if kind == MESSAGE else chats
    recency = conversations.c.created_at if kind == MESSAGE else chats.c.updated_at
    return matches(kind, query).with_only_columns(
        sa.literal(kind).label("kind"),
        table.c.id.label("id"),
        index_score(table, query).label("score"),
        recency.label("recency"),
    )


def hits(keys: list, query: Query) -> list[dict]:
    """The page's hits, in the order of their keys."""
    chats, conversations = Chat.__table__, Conversation.__table__
    found = {}
    names = [id for kind, id in keys if kind == NAME]
    if names:
        rows = db.session.execute(sa.select(chats).where(chats.c.id.in_(names)))
        found |= {(NAME, row.id): hit(row.id, row.name, None, row.created_at, row.name, query) for row in rows}
    messages = [id for kind, id in keys if kind == MESSAGE]
    if messages:
        columns = (conversations, chats.c.name.label("chat_name"))
        joined = conversations.join(chats, chats.c.id == conversations.c.chat_id)
        rows = db.session.execute(sa.select(*columns).select_from(joined).where(conversations.c.id.in_(messages)))
        found |= {
            (MESSAGE, row.id): hit(row.chat_id, row.chat_name, row, row.created_at, row.message, query) for row in rows
        }
    return [found[key] for key in map(tuple, keys) if key in found]


def hit(chat_id, chat_name: str, message, created_at, text: str, query: Query) -> dict:
    shown, highlights = snippet(query, text)
    return {
        "chat_id": chat_id,
        "chat_name": chat_name,
        "conversation_id": message.id if message else None,
        "role": message.role if message else None,
        "created_at": created_at,
        "snippet": shown,
        "highlights": highlights,
    }


def sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


def index_match(table: sa.Table, query: Query) -> tuple:
    """The table joined to its index (chatapi/search_index.py), and the condition a matching row meets."""
    if sqlite():
        fts = sa.table(search_index.fts_table(table.name), sa.column("rowid"))
        joined = table.join(fts, fts.c.rowid == sa.literal_column(f"{table.name}.rowid"))
        return joined, sa.literal_column(fts.name).op("MATCH")(query.fts5())
    return table, vector(table).op("@@")(tsquery(query))


def index_score(table: sa.Table, query: Query):
    """A matching row's relevance, lower first."""
    if sqlite():
        return sa.func.bm25(sa.literal_column(search_index.fts_table(table.name)))
    # ts_rank's normalization 1 divides by the log of the text's length, as FTS5's bm25 weighs a long text less.
    return -sa.func.ts_rank(vector(table), tsquery(query), 1)


def vector(table: sa.Table):
    return sa.literal_column(f"{table.name}.{search_index.VECTOR_COLUMN}")


def tsquery(query: Query):
    return sa.func.websearch_to_tsquery(sa.literal_column("'simple'::regconfig"), query.websearch())

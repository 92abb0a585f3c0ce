"""GET /search: every message and chat name of the asker's, found by their words (the index of
chatapi/search_index.py), each hit with a snippet and the matched words' places (chatapi/snippets.py)."""

import marshmallow as ma
import sqlalchemy as sa
from marshmallow import fields, validate

from .extensions import db
from .models import Chat, Conversation, owned
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
    hits = sa.union_all(*(matches(kind, query) for kind in (MESSAGE, NAME))).subquery()
    page = (
        sa.select(hits)
        .order_by(hits.c.kind, hits.c.score, hits.c.recency.desc(), hits.c.id.desc())
        .offset(args["offset"])
        .limit(args["limit"])
    )
    count = sa.select(sa.func.count()).select_from(hits)
    total = db.session.scalar(count)
    return [hit(row, query) for row in db.session.execute(page)], 200, {"X-Total-Count": str(total)}


def hit(row, query: Query) -> dict:
    text, highlights = snippet(query, row.text)
    return {
        "chat_id": row.chat_id,
        "chat_name": row.chat_name,
        "conversation_id": row.conversation_id,
        "role": row.role,
        "created_at": row.created_at,
        "snippet": text,
        "highlights": highlights,
    }


def matches(kind: int, query: Query) -> sa.Select:
    """The asker's chat names (NAME) or messages (MESSAGE) that match, with a score (lower is more relevant)."""
    chats, conversations = Chat.__table__, Conversation.__table__
    table = conversations if kind == MESSAGE else chats
    found, condition, score = matched(table, query)
    if kind == MESSAGE:
        columns = (conversations.c.id, conversations.c.role, conversations.c.created_at, conversations.c.message)
        recency = conversations.c.created_at
        source = found.join(chats, chats.c.id == conversations.c.chat_id)
    else:
        none = sa.type_coerce(sa.null(), conversations.c.id.type), sa.type_coerce(sa.null(), conversations.c.role.type)
        columns = (*none, chats.c.created_at, chats.c.name)
        recency = chats.c.updated_at
        source = found
    conversation_id, role, created_at, text = columns
    select = sa.select(
        sa.literal(kind).label("kind"),
        chats.c.id.label("chat_id"),
        chats.c.name.label("chat_name"),
        conversation_id.label("conversation_id"),
        role.label("role"),
        created_at.label("created_at"),
        text.label("text"),
        score.label("score"),
        recency.label("recency"),
        (conversations.c.id if kind == MESSAGE else chats.c.id).label("id"),
    ).select_from(source)
    return owned(select.where(condition))


def matched(table: sa.Table, query: Query):
    """The table joined to its index, the condition a matching row meets, and the row's score (lower is better)."""
    if db.engine.dialect.name == "sqlite":
        fts = sa.table(f"{table.name}_fts", sa.column("rowid"))
        index = sa.literal_column(fts.name)
        found = table.join(fts, fts.c.rowid == sa.literal_column(f"{table.name}.rowid"))
        return found, index.op("MATCH")(query.fts5()), sa.func.bm25(index)
    tsquery = sa.func.websearch_to_tsquery(sa.literal_column("'simple'::regconfig"), query.websearch())
    vector = sa.literal_column(f"{table.name}.search_vector")
    # ts_rank's normalization 1 divides by the log of the text's length, as FTS5's bm25 weighs a long text less.
    return table, vector.op("@@")(tsquery), -sa.func.ts_rank(vector, tsquery, 1)

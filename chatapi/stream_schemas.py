"""The inference streams' events (CONTRACT.md), documented for clients: each event's data is a JSON document,
and STREAM_EVENTS is the stream's schema in the API document (chatapi/conversations.py)."""

import marshmallow as ma
from marshmallow import fields, validate

from .openapi import JSONText
from .schemas import CitationSchema, ConversationSchema, SourceSchema


class StreamStartSchema(ma.Schema):
    chat_id = fields.UUID(required=True)
    message_id = fields.UUID(required=True, metadata={"description": "the id the saved reply will have"})
    mode = fields.String(required=True, validate=validate.OneOf(["local", "internet"]))
    model = fields.String(required=True, metadata={"description": "the id of the model that writes the reply"})
    truncated = fields.Integer(
        required=True,
        metadata={"description": "history messages left out or cut to fit (a cut system prompt counts as one)"},
    )


class StreamSearchSchema(ma.Schema):
    query = fields.String(required=True)


class StreamSourcesSchema(ma.Schema):
    sources = fields.List(fields.Nested(SourceSchema), required=True)


class FailedBackendSchema(ma.Schema):
    backend = fields.String(required=True, metadata={"description": "duckduckgo or searxng"})
    reason = fields.String(required=True, metadata={"description": "rate limiting (202), answered 500, ..."})


class StreamWarningSchema(ma.Schema):
    message = fields.String(required=True, metadata={"description": "the search or the pages failed"})
    failed = fields.List(
        fields.Nested(FailedBackendSchema),
        required=True,
        metadata={
            "description": "the search backends that failed, in the order tried (also when a later one answered)"
        },
    )


class StreamQueuedSchema(ma.Schema):
    position = fields.Integer(required=True, metadata={"description": "replies ahead of this one"})


class StreamTokenSchema(ma.Schema):
    content = fields.String(required=True, metadata={"description": "the next piece of the reply's text"})


class UsageSchema(ma.Schema):
    # null: a remote model server (CHATAPI_LLM_BACKEND=openai) reported no count, and `note` says so.
    prompt_tokens = fields.Integer(required=True, allow_none=True)
    completion_tokens = fields.Integer(required=True, allow_none=True)
    cached_tokens = fields.Integer(required=True, allow_none=True)
    note = fields.String(metadata={"description": "why the counts are null"})


class TimingsSchema(ma.Schema):
    queue_ms = fields.Float(required=True)
    ttft_ms = fields.Float(required=True)
    total_ms = fields.Float(required=True)
    tokens_per_second = fields.Float(required=True, allow_none=True)
    prompt_ms = fields.Float(metadata={"description": "of ttft_ms: building the prompt (history rendered, tokenized)"})
    handoff_ms = fields.Float(metadata={"description": "of ttft_ms: from leaving the queue to the model taking it"})
    prefill_ms = fields.Float(metadata={"description": "of ttft_ms: the model reading the prompt, to its first token"})
    search_ms = fields.Float(metadata={"description": "internet mode"})
    fetch_ms = fields.Float(metadata={"description": "internet mode"})
    rank_ms = fields.Float(metadata={"description": "internet mode"})


class StreamDoneSchema(ma.Schema):
    message = fields.Nested(
        ConversationSchema, required=True, allow_none=True, metadata={"description": "null when nothing was written"}
    )
    finish_reason = fields.String(required=True, validate=validate.OneOf(["stop", "length", "cancelled"]))
    citations = fields.List(
        fields.Nested(CitationSchema),
        required=True,
        allow_none=True,
        metadata={"description": "the saved message's: null in local mode, without sources, or with no message"},
    )
    usage = fields.Nested(UsageSchema, required=True)
    timings = fields.Nested(TimingsSchema, required=True)


class StreamErrorSchema(ma.Schema):
    code = fields.Integer(required=True)
    message = fields.String(required=True)


def stream_event(name: str, data: type[ma.Schema]) -> type[ma.Schema]:
    """One kind of event as an EventSource client sees it: its id, its name ("message" when the stream gives
    none: the tokens) and its data."""
    return ma.Schema.from_dict(
        {
            "id": fields.String(required=True, metadata={"description": "send the last one as Last-Event-ID"}),
            "event": fields.String(required=True, validate=validate.OneOf([name])),
            "data": JSONText(data, required=True),
        },
        name=f"{name.title()}Event",
    )


STREAM_EVENTS = [
    stream_event(name, data)
    for name, data in [
        ("start", StreamStartSchema),
        ("search", StreamSearchSchema),
        ("sources", StreamSourcesSchema),
        ("warning", StreamWarningSchema),
        ("queued", StreamQueuedSchema),
        ("message", StreamTokenSchema),
        ("done", StreamDoneSchema),
        ("error", StreamErrorSchema),
    ]
]

"""marshmallow schemas of the share links (chatapi/shares.py): the request to make one, a link as listed, a link
just made (with its URL, shown once), and the shared chat's query."""

import marshmallow as ma
from marshmallow import fields, validate

from .schemas import TIMESTAMP_FORMAT, RequestSchema, Timestamp

MIN_EXPIRES_IN = 60  # a minute
MAX_EXPIRES_IN = 315_360_000  # ten years (of 365 days)


class ShareCreateSchema(RequestSchema):
    expires_in = fields.Integer(
        required=True,
        allow_none=True,
        strict=True,
        validate=validate.Range(MIN_EXPIRES_IN, MAX_EXPIRES_IN),
        metadata={
            "description": f"seconds the link works for, {MIN_EXPIRES_IN} to {MAX_EXPIRES_IN} (ten years); null: until "
            "it is revoked",
            "example": 604800,
        },
    )


class ShareSchema(ma.Schema):
    id = fields.UUID(required=True)
    created_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    expires_at = Timestamp(
        required=True, allow_none=True, metadata={**TIMESTAMP_FORMAT, "description": "null: never, until revoked"}
    )


class NewShareSchema(ShareSchema):
    url = fields.String(
        required=True,
        metadata={
            "description": "the link's path, /s/<token>, on this server: shown this once, never again (the server "
            "keeps only a hash of the token)",
            "example": "/s/0vXfQp5rJ2mC8a1TnG6yK3dL9wZ4uE7hB2sV5xR8cY0",
        },
    )


class SharedChatQuerySchema(RequestSchema):
    format = fields.String(
        load_default="html",
        validate=validate.OneOf(["html", "json"]),
        metadata={"description": "html: the read-only page (the default); json: the chat's export document"},
    )

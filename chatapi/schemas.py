"""marshmallow schemas: one per representation, plus the request bodies and queries. The inference streams'
events are chatapi/stream_schemas.py's."""

from datetime import UTC, datetime
from urllib.parse import urlsplit

import marshmallow as ma
from flask import current_app
from flask_smorest import abort
from marshmallow import fields, validate

from .llm.grammar import MAX_QUERY_SCHEMA_CHARS, UnsupportedSchema, reply_grammar
from .models import ROLES

# The largest integer SQLite and PostgreSQL take (a BIGINT): a larger OFFSET is an error in the database.
BIGINT_MAX = 2**63 - 1
# How every time is written (CONTRACT.md), pinned in the document.
TIMESTAMP_FORMAT = {"pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", "example": "2023-08-05T14:48:00.000Z"}


def timestamp_text(moment: datetime) -> str:
    """A stored (naive UTC) time as the API writes it: 2023-08-05T14:48:00.000Z."""
    # isoformat, unlike strftime("%Y"), writes years before 1000 with four digits too (0999-...).
    return moment.isoformat(timespec="milliseconds") + "Z"


class Timestamp(fields.DateTime):
    """UTC as in the API document (2023-08-05T14:48:00.000Z); input with any offset is normalised."""

    def _serialize(self, value: datetime | None, attr, obj, **kwargs):
        return None if value is None else timestamp_text(value)

    def _deserialize(self, value, attr, data, **kwargs) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        if moment.tzinfo is None:  # no offset given: the document's times are all UTC
            return moment
        try:
            return moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError as exc:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from exc


class StorableString(fields.String):
    """A string both databases can store and compare: no NUL (PostgreSQL's text refuses it) and no lone
    surrogate (JSON can escape one, but it is no UTF-8)."""

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ma.ValidationError("Must not contain NUL characters.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ma.ValidationError("Must not contain lone surrogates (invalid Unicode).") from exc
        return text


class Text(StorableString):
    """A string that must hold more than white space."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.metadata = {"pattern": r"\S", **self.metadata}  # the document says so too

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text.strip():
            raise ma.ValidationError("Must not be empty.")
        return text


class Name(Text):
    """A chat's name: white space around it is left out, and at most 200 characters remain."""

    def __init__(self, **kwargs):
        super().__init__(validate=validate.Length(max=200), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return super()._deserialize(value, attr, data, **kwargs).strip()


MESSAGE_LENGTH = {"description": "at most CHATAPI_MAX_MESSAGE_CHARS characters (65536 by default)"}


def message_length(message: str) -> None:
    """Messages are capped by CHATAPI_MAX_MESSAGE_CHARS."""
    limit = current_app.config["CHATAPI_MAX_MESSAGE_CHARS"]
    if len(message) > limit:
        raise ma.ValidationError(f"Longer than maximum length {limit}.")


class SystemPrompt(StorableString):
    """A chat's system prompt, as long as a message may be; null or blank clears it (None)."""

    def __init__(self, **kwargs):
        description = f"replaces CHATAPI_SYSTEM_PROMPT; null or blank: the server's. {MESSAGE_LENGTH['description']}"
        super().__init__(allow_none=True, validate=message_length, metadata={"description": description}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> str | None:
        text = super()._deserialize(value, attr, data, **kwargs)
        return text if text.strip() else None

    def _validate(self, value) -> None:
        if value is not None:  # a cleared prompt has no length to check
            super()._validate(value)


# A model's id: the catalog's are at most 200 characters; a remote server's may be its file's path.
MODEL_ID_LENGTH = 1000


def known_model(model_id: str | None) -> None:
    """A model this server has (GET /models lists them); None is the server's default."""
    from .llm.catalog import UnknownModel
    from .replies import service

    if model_id is not None:
        try:
            service().resolve(model_id)
        except UnknownModel:
            raise ma.ValidationError(f"No model has the id {model_id!r}: GET /models lists them.") from None


class ModelId(StorableString):
    """A model's id, or null (on a chat: the server's default, CHATAPI_MODEL)."""

    def __init__(self, description: str, **kwargs):
        super().__init__(
            validate=[validate.Length(min=1, max=MODEL_ID_LENGTH), known_model],
            metadata={"description": description},
            **kwargs,
        )


class RequestSchema(ma.Schema):
    class Meta:
        # Clients may send back a whole object (id, created_at...): extra fields are ignored.
        unknown = ma.EXCLUDE


class ChatSchema(ma.Schema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    system_prompt = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "replaces CHATAPI_SYSTEM_PROMPT in this chat's replies; null: the server's"},
    )
    model = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the id of the model its replies use (GET /models); null: the server's default"},
    )
    created_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    updated_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)


class ChatCreateSchema(RequestSchema):
    name = Name(required=True)
    system_prompt = SystemPrompt()
    model = ModelId("the id of a model (GET /models) its replies use; null: the server's default", allow_none=True)


class ChatUpdateSchema(RequestSchema):
    name = Name()
    system_prompt = SystemPrompt()
    model = ModelId("the id of a model (GET /models) its replies use; null: the server's default", allow_none=True)
    updated_at = Timestamp(metadata={"description": "stored as given (normalised to UTC); else now"})

    @ma.validates_schema
    def changes_something(self, data, **kwargs):
        if not {"name", "system_prompt", "model"} & data.keys():
            message = "Give name, system_prompt, model, or more than one."
            raise ma.ValidationError({"name": [message], "system_prompt": [message], "model": [message]})


class ChatListQuerySchema(RequestSchema):
    limit = fields.Integer(validate=validate.Range(min=1, max=1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=BIGINT_MAX))
    q = StorableString(validate=validate.Length(max=200))


def http_url(url: str) -> None:
    """Sources are web pages the server read: http(s) URLs with a host (what an imported chat may hold too)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ma.ValidationError("Must be an http or https URL.")


# Sources and citations are checked as the app stores them when a chat is imported (POST /chats/import).


class SourceSchema(RequestSchema):
    """A web page an internet-mode answer cites."""

    n = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1), metadata={"description": "cited as [n]"}
    )
    title = StorableString(required=True)
    url = StorableString(required=True, validate=http_url, metadata={"description": "http or https"})
    snippet = StorableString(required=True)


class CitationSchema(RequestSchema):
    """A sentence of an internet-mode answer and the source that supports it."""

    start = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=0),
        metadata={"description": "where the sentence starts in message"},
    )
    end = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1),
        metadata={"description": "offset just after its last: message[start:end]"},
    )
    n = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1),
        metadata={"description": "the source cited: its n in sources"},
    )

    @ma.validates_schema
    def not_empty(self, data, **kwargs):
        if data["end"] <= data["start"]:
            raise ma.ValidationError("Must be greater than start.", field_name="end")


CITATIONS = {
    "description": "internet answers: the sentences each source supports, in text order (the [n] the model wrote, "
    "else the best-matching passage, when it matches well enough); [] when none; else null"
}


class ConversationSchema(ma.Schema):
    id = fields.UUID(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    chat_id = fields.UUID(required=True)
    message = fields.String(required=True)
    created_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    updated_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    sources = fields.List(
        fields.Nested(SourceSchema),
        required=True,
        allow_none=True,
        metadata={"description": "internet answers: the pages cited as [n]; else null"},
    )
    citations = fields.List(fields.Nested(CitationSchema), required=True, allow_none=True, metadata=CITATIONS)
    model = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the id of the model that wrote an Assistant message; else null"},
    )


class ConversationCreateSchema(RequestSchema):
    chat_id = fields.UUID(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    message = Text(required=True, validate=message_length, metadata=MESSAGE_LENGTH)


class ConversationUpdateSchema(RequestSchema):
    message = Text(required=True, validate=message_length, metadata=MESSAGE_LENGTH)


class ConversationListQuerySchema(RequestSchema):
    chat_id = fields.UUID(required=True)


class DeleteAfterQuerySchema(RequestSchema):
    after = fields.UUID(
        required=True,
        metadata={"description": "a conversation of the chat: it stays, every one after it is deleted"},
    )


class DeletedAfterSchema(ma.Schema):
    chat_id = fields.UUID(required=True)
    deleted = fields.Integer(required=True, metadata={"description": "conversations deleted"})


# A chat as a file (GET /chats/<id>/export, POST /chats/import): no ids, every time and web source kept.
# Its times are written as everywhere (TIMESTAMP_FORMAT) and read with any offset; the pattern is left out of
# the document here, where the same schema describes a request body (generators struggle to meet it there).
FILE_TIMESTAMP = {"example": TIMESTAMP_FORMAT["example"]}


class ExportedChatSchema(RequestSchema):
    name = Name(required=True)
    system_prompt = SystemPrompt(load_default=None)
    model = StorableString(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=MODEL_ID_LENGTH),
        metadata={"description": "the chat's model; imported only where the server has it, else null (its default)"},
    )
    created_at = Timestamp(required=True, metadata=FILE_TIMESTAMP)
    updated_at = Timestamp(required=True, metadata=FILE_TIMESTAMP)


class ExportedConversationSchema(RequestSchema):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    message = Text(required=True, validate=message_length, metadata=MESSAGE_LENGTH)
    model = StorableString(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=MODEL_ID_LENGTH),
        metadata={"description": "Assistant messages: the model that wrote it"},
    )
    created_at = Timestamp(required=True, metadata=FILE_TIMESTAMP)
    updated_at = Timestamp(required=True, metadata=FILE_TIMESTAMP)
    sources = fields.List(
        fields.Nested(SourceSchema),
        allow_none=True,
        load_default=None,
        metadata={"description": "Assistant messages only (internet answers); their numbers differ"},
    )
    citations = fields.List(
        fields.Nested(CitationSchema),
        allow_none=True,
        load_default=None,
        metadata={"description": "with sources only: spans of message, each naming one of the sources"},
    )

    @ma.validates_schema
    def as_the_app_stores_it(self, data, **kwargs):
        """Sources belong to Assistant answers and are numbered once each; citations point into the message
        and at those sources."""
        errors = {}
        sources, citations = data["sources"], data["citations"]
        if sources is not None and data["role"] != "Assistant":
            errors["sources"] = ["Only Assistant messages have sources."]
        numbers = set()
        for i, source in enumerate(sources or []):
            if source["n"] in numbers:
                errors.setdefault("sources", {})[i] = {"n": ["Another source has this number."]}
            numbers.add(source["n"])
        if citations is not None and sources is None:
            errors["citations"] = ["Only messages with sources have citations."]
        elif citations:
            for i, citation in enumerate(citations):
                problems = {}
                if citation["end"] > len(data["message"]):
                    problems["end"] = [f"Must be at most the message's length, {len(data['message'])}."]
                if citation["n"] not in numbers:
                    problems["n"] = ["No source has this number."]
                if problems:
                    errors.setdefault("citations", {})[i] = problems
        if errors:
            raise ma.ValidationError(errors)


class ChatExportSchema(RequestSchema):
    chatapi_export = fields.Integer(
        required=True, strict=True, validate=validate.OneOf([1]), metadata={"description": "the format's version"}
    )
    chat = fields.Nested(ExportedChatSchema, required=True)
    conversations = fields.List(
        fields.Nested(ExportedConversationSchema),
        required=True,
        metadata={
            "description": "oldest first; at most CHATAPI_MAX_IMPORT_MESSAGES (1,000 by default), and the request "
            "size limit (CHATAPI_MAX_BODY_BYTES) caps an import too"
        },
    )

    @ma.pre_load
    def not_too_many_messages(self, data, **kwargs):
        """Counted before any message is read: the one worker checks and stores about 3,000 messages a second, and
        serves nobody else meanwhile."""
        conversations = data.get("conversations") if isinstance(data, dict) else None
        limit = current_app.config["CHATAPI_MAX_IMPORT_MESSAGES"]
        if isinstance(conversations, list) and len(conversations) > limit:
            abort(
                413,
                message=f"an import may hold at most {limit} messages (CHATAPI_MAX_IMPORT_MESSAGES); this one holds "
                f"{len(conversations)}",
            )
        return data


class ExportQuerySchema(RequestSchema):
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "markdown"]))


class DeletedSchema(ma.Schema):
    id = fields.UUID(required=True)
    deleted = fields.Boolean(required=True)


def max_tokens_fit(value: int) -> None:
    """A reply may take at most half the context window: the rest is for the history."""
    limit = current_app.config["CHATAPI_N_CTX"] // 2
    if value > limit:
        raise ma.ValidationError(f"Must be at most {limit} (half of CHATAPI_N_CTX).")


class InferenceQuerySchema(RequestSchema):
    max_tokens = fields.Integer(
        validate=[validate.Range(min=1), max_tokens_fit],
        metadata={"description": "at most half of CHATAPI_N_CTX (2048 by default); CHATAPI_MAX_TOKENS if not given"},
    )
    temperature = fields.Float(validate=validate.Range(min=0, max=2), metadata={"description": "0 is greedy"})
    top_p = fields.Float(
        validate=validate.Range(min=0, max=1, min_inclusive=False),
        metadata={"exclusiveMinimum": True},  # apispec leaves min_inclusive out of the document
    )
    seed = fields.Integer(validate=validate.Range(min=0, max=2**32 - 1))
    after = fields.UUID(
        metadata={
            "description": "the message this reply answers: when the chat has moved on past it (the reply was "
            "already saved), 204 instead of a new reply; a page reloaded mid-reply never starts a second one"
        }
    )
    replace = fields.UUID(
        metadata={
            "description": "regenerate: the chat's last message, an Assistant one; the reply answers the history "
            "before it, and replaces it when the reply is saved (a reply that ends without text leaves it)"
        }
    )
    model = ModelId("this reply's model, in place of the chat's (GET /models lists them)")
    format = fields.String(
        validate=validate.OneOf(["text", "json"]),
        metadata={"description": "json: the reply is one JSON object, its sampling held to it by a grammar"},
    )
    schema = fields.String(
        validate=validate.Length(max=MAX_QUERY_SCHEMA_CHARS),
        metadata={"description": "a JSON Schema (as JSON) the reply validates against; implies format=json"},
    )

    @ma.post_load
    def grammar(self, data: dict, **kwargs) -> dict:
        """The grammar the reply is sampled under (an Options field), else a 422 naming what it cannot enforce."""
        try:
            data["grammar"] = reply_grammar(data.get("format"), data.get("schema"))
        except UnsupportedSchema as exc:
            raise ma.ValidationError(str(exc), "schema") from None
        return data


class StoppedSchema(ma.Schema):
    chat_id = fields.UUID(required=True)
    stopped = fields.Boolean(required=True, metadata={"description": "false when nothing was generating"})

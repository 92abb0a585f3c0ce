"""Routes under /conversations/: messages of a chat, and the inference streams."""

from flask import request

from . import replies
from .extensions import db
from .models import Chat, Conversation, owned_or_404
from .openapi import Blueprint, ErrorSchema
from .schemas import (
    ConversationCreateSchema,
    ConversationListQuerySchema,
    ConversationSchema,
    ConversationUpdateSchema,
    DeletedSchema,
    InferenceQuerySchema,
    StoppedSchema,
)
from .stream_schemas import STREAM_EVENTS

bp = Blueprint("conversations", __name__, url_prefix="/conversations", description="Conversations")

STREAM_RESPONSES = {
    "200": {
        "description": "The reply as Server-Sent Events: start, (internet: search, then sources or warning), "
        "queued, tokens, then done or error.",
        # Each event (OpenAPI 3.2 reads `schema` of an event stream so): its name, id and JSON data.
        "content": {"text/event-stream": {"schema": {"oneOf": STREAM_EVENTS}}},
    },
    "204": {"description": "There is nothing to send: the reply that Last-Event-ID or `after` names was delivered."},
}
# A reconnecting EventSource sends the id of the last event it got.
LAST_EVENT_ID = {
    "in": "header",
    "name": "Last-Event-ID",
    "schema": {"type": "string"},
    "description": "resume after this event of the running reply; 204 when that reply was delivered in full",
}
QUEUE_FULL = {"Retry-After": {"description": "seconds to wait (queue full)", "schema": {"type": "integer"}}}


def stream_route(route):
    """The documentation the two stream routes share: events, or an error before the stream starts."""
    route = bp.doc(responses=STREAM_RESPONSES)(route)
    route = bp.alt_response(404, response="NOT_FOUND")(route)
    conflict = "The chat has no Human message to answer, or `replace` is not its last message, an Assistant one."
    route = bp.alt_response(409, description=conflict, schema=ErrorSchema)(route)
    description = "The model is not loaded, its queue is full (Retry-After), or the database is unavailable."
    return bp.alt_response(503, description=description, schema=ErrorSchema, headers=QUEUE_FULL)(route)


@bp.route("/", methods=["GET"])
@bp.arguments(ConversationListQuerySchema, location="query")
@bp.response(200, ConversationSchema(many=True))
@bp.alt_response(404, response="NOT_FOUND")
def list_conversations(args):
    """List a chat's conversations (chat_id=...), oldest first."""
    return owned_or_404(Chat, args["chat_id"]).history()


@bp.route("/<conversation_id>", methods=["GET"])
@bp.response(200, ConversationSchema)
@bp.alt_response(404, response="NOT_FOUND")
def get_conversation(conversation_id):
    """Get one conversation."""
    return owned_or_404(Conversation, conversation_id)


@bp.route("/create", methods=["POST"])
@bp.arguments(ConversationCreateSchema)
@bp.response(201, ConversationSchema)
@bp.alt_response(404, response="NOT_FOUND")
def create_conversation(args):
    """Add a message to a chat; the chat's updated_at moves to now."""
    chat = owned_or_404(Chat, args["chat_id"])
    conversation = Conversation(chat=chat, role=args["role"], message=args["message"])
    db.session.add(conversation)
    db.session.commit()
    return conversation


@bp.route("/update/<conversation_id>", methods=["PUT"])
@bp.arguments(ConversationUpdateSchema)
@bp.response(200, ConversationSchema)
@bp.alt_response(404, response="NOT_FOUND")
def update_conversation(args, conversation_id):
    """Replace a conversation's message."""
    conversation = owned_or_404(Conversation, conversation_id)
    conversation.edit(args["message"])
    db.session.commit()
    return conversation


@bp.route("/delete/<conversation_id>", methods=["DELETE"])
@bp.response(200, DeletedSchema)
@bp.alt_response(404, response="NOT_FOUND")
def delete_conversation(conversation_id):
    """Delete one conversation."""
    conversation = owned_or_404(Conversation, conversation_id)
    db.session.delete(conversation)
    db.session.commit()
    return {"id": conversation.id, "deleted": True}


@bp.route("/inference/<chat_id>", methods=["GET"], parameters=[LAST_EVENT_ID])
@bp.arguments(InferenceQuerySchema, location="query")
@stream_route
def inference(args, chat_id):
    """Stream the chat's next Assistant turn from the local model (Server-Sent Events), then save it."""
    return replies.stream(owned_or_404(Chat, chat_id), "local", args, request.headers.get("Last-Event-ID"))


@bp.route("/inference_internet/<chat_id>", methods=["GET"], parameters=[LAST_EVENT_ID])
@bp.arguments(InferenceQuerySchema, location="query")
@stream_route
def inference_internet(args, chat_id):
    """Stream the next Assistant turn grounded in web pages read for the latest Human message, with
    numbered sources (`search`, `sources` or `warning` events before the tokens)."""
    return replies.stream(owned_or_404(Chat, chat_id), "internet", args, request.headers.get("Last-Event-ID"))


@bp.route("/stop/<chat_id>", methods=["POST"])
@bp.response(200, StoppedSchema)
@bp.alt_response(404, response="NOT_FOUND")
def stop(chat_id):
    """Stop the chat's running generation; its partial reply is saved as cancelled."""
    chat = owned_or_404(Chat, chat_id)
    return {"chat_id": chat.id, "stopped": replies.stop(chat.id)}

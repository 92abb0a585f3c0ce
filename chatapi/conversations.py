"""Routes under /conversations/: messages of a chat, and the inference streams."""

from flask import Response, current_app, request
from flask_smorest import abort

from .blueprint import Blueprint
from .extensions import db
from .llm import replies
from .llm.prompt import Message
from .llm.replies import Generation, QueueFull, options_from
from .llm.sse import event_stream_response
from .models import Chat, Conversation, get_or_404
from .schemas import (
    ConversationCreateSchema,
    ConversationListQuerySchema,
    ConversationSchema,
    ConversationUpdateSchema,
    DeletedSchema,
    InferenceQuerySchema,
    StoppedSchema,
)
from .web.research import Settings as WebSettings
from .web.research import grounding

STREAM_RESPONSES = {
    "200": {
        "description": "The reply as Server-Sent Events: start, (internet: search, then sources or warning), "
        "queued, tokens, then done or error.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    "204": {"description": "Last-Event-ID names the end of a reply already delivered in full."},
    "404": {"description": "Unknown chat."},
    "409": {"description": "The chat has no Human message."},
    "503": {"description": "The model is not loaded, or its queue is full (Retry-After)."},
}

bp = Blueprint("conversations", __name__, url_prefix="/conversations", description="Conversations")


@bp.route("/", methods=["GET"])
@bp.arguments(ConversationListQuerySchema, location="query")
@bp.response(200, ConversationSchema(many=True))
@bp.alt_response(404, response="DEFAULT_ERROR")
def list_conversations(args):
    """List a chat's conversations (chat_id=...), oldest first."""
    return get_or_404(Chat, args["chat_id"]).history()


@bp.route("/<conversation_id>", methods=["GET"])
@bp.response(200, ConversationSchema)
@bp.alt_response(404, response="DEFAULT_ERROR")
def get_conversation(conversation_id):
    """Get one conversation."""
    return get_or_404(Conversation, conversation_id)


@bp.route("/create", methods=["POST"])
@bp.arguments(ConversationCreateSchema)
@bp.response(201, ConversationSchema)
@bp.alt_response(404, response="DEFAULT_ERROR")
def create_conversation(args):
    """Add a message to a chat; the chat's updated_at moves to now."""
    chat = get_or_404(Chat, args["chat_id"])
    conversation = Conversation(chat=chat, role=args["role"], message=args["message"])
    db.session.add(conversation)
    db.session.commit()
    return conversation


@bp.route("/update/<conversation_id>", methods=["PUT"])
@bp.arguments(ConversationUpdateSchema)
@bp.response(200, ConversationSchema)
@bp.alt_response(404, response="DEFAULT_ERROR")
def update_conversation(args, conversation_id):
    """Replace a conversation's message."""
    conversation = get_or_404(Conversation, conversation_id)
    conversation.edit(args["message"])
    db.session.commit()
    return conversation


@bp.route("/delete/<conversation_id>", methods=["DELETE"])
@bp.response(200, DeletedSchema)
@bp.alt_response(404, response="DEFAULT_ERROR")
def delete_conversation(conversation_id):
    """Delete one conversation."""
    conversation = get_or_404(Conversation, conversation_id)
    db.session.delete(conversation)
    db.session.commit()
    return {"id": conversation.id, "deleted": True}


@bp.route("/inference/<chat_id>", methods=["GET"])
@bp.arguments(InferenceQuerySchema, location="query")
@bp.doc(responses=STREAM_RESPONSES)
def inference(args, chat_id):
    """Stream the chat's next Assistant turn from the local model (Server-Sent Events), then save it."""
    return stream_reply(chat_id, "local", args)


@bp.route("/inference_internet/<chat_id>", methods=["GET"])
@bp.arguments(InferenceQuerySchema, location="query")
@bp.doc(responses=STREAM_RESPONSES)
def inference_internet(args, chat_id):
    """Stream the next Assistant turn grounded in web pages read for the latest Human message, with
    numbered sources (`search`, `sources` or `warning` events before the tokens)."""
    return stream_reply(chat_id, "internet", args)


@bp.route("/stop/<chat_id>", methods=["POST"])
@bp.response(200, StoppedSchema)
@bp.alt_response(404, response="DEFAULT_ERROR")
def stop(chat_id):
    """Stop the chat's running generation; its partial reply is saved as cancelled."""
    chat = get_or_404(Chat, chat_id)
    generation = replies().current(str(chat.id))
    running = generation is not None and not generation.finished
    if running:
        generation.cancel()
    return {"chat_id": chat.id, "stopped": running}


def stream_reply(chat_id: str, mode: str, args: dict):
    """Join the chat's running generation, resume it after Last-Event-ID, or start the next one."""
    chat = get_or_404(Chat, chat_id)
    service = replies()
    generation = service.current(str(chat.id))
    last_event_id = request.headers.get("Last-Event-ID")
    seen = generation.index_of(last_event_id) if generation and last_event_id is not None else None
    if generation and not generation.finished:
        return event_stream_response(generation.listen(after=-1 if seen is None else seen))
    if seen is not None and seen < len(generation.events) - 1:
        return event_stream_response(generation.listen(after=seen))  # the rest of a finished reply
    conversations = chat.history()
    if not answer_is_wanted(conversations, generation, last_event_id, args.get("after")):
        return Response(status=204)  # tells EventSource not to reconnect
    history = [Message(c.role, c.message) for c in conversations]
    if not any(m.role == "Human" for m in history):
        abort(409, message=f"chat {chat.id} has no Human message to answer")
    service.load()
    if service.status != "ok":
        abort(503, message=service.error or f"the model is {service.status}")
    config = current_app.config
    research = None
    if mode == "internet":
        question = next(m.text for m in reversed(history) if m.role == "Human")
        research = grounding(question, WebSettings.from_config(config), service.count_tokens)
    try:
        generation = service.start(
            current_app._get_current_object(),
            str(chat.id),
            mode,
            history,
            config["CHATAPI_SYSTEM_PROMPT"],
            options_from(args, config),
            research,
            answering=conversations[-1].id if conversations else None,
        )
    except QueueFull:
        abort(503, message="the model's queue is full", headers={"Retry-After": "5"})
    return event_stream_response(generation.listen())


def answer_is_wanted(conversations: list[Conversation], last: Generation | None, last_event_id, after) -> bool:
    """Whether a request that no running reply can serve should start one.

    A plain request always does. A reconnect (Last-Event-ID naming a reply that is over, unknown, or
    from before a restart) and `after=<message id>` (a reloaded page) only do for a Human message that
    no reply has answered yet, so a reply delivered in full is never made twice, while a Human message
    added since the old reply is still answered.
    """
    if last_event_id is None and after is None:
        return True
    latest = conversations[-1] if conversations else None
    if latest is None or latest.role != "Human" or (after is not None and latest.id != after):
        return False
    return last is None or last.answering != latest.id

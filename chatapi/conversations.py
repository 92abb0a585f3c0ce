"""Routes under /conversations/: messages of a chat, and (next) the inference streams."""

from .blueprint import Blueprint
from .extensions import db
from .models import Chat, Conversation, get_or_404
from .schemas import (
    ConversationCreateSchema,
    ConversationListQuerySchema,
    ConversationSchema,
    ConversationUpdateSchema,
    DeletedSchema,
)

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

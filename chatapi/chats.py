"""Routes under /chats/, exactly as the API document names them."""

from flask import Response, url_for
from flask_smorest import abort

from . import replies, transfer
from .extensions import db
from .models import Chat, Conversation, owned_or_404, utcnow
from .openapi import Blueprint, ErrorSchema
from .schemas import (
    ChatCreateSchema,
    ChatExportSchema,
    ChatListQuerySchema,
    ChatSchema,
    ChatUpdateSchema,
    ConversationSchema,
    DeleteAfterQuerySchema,
    DeletedAfterSchema,
    DeletedSchema,
    ExportQuerySchema,
)

bp = Blueprint("chats", __name__, url_prefix="/chats", description="Chats")

TOTAL_COUNT = {"description": "chats matching q", "schema": {"type": "integer"}, "required": True}
LOCATION = {"description": "the new chat's URL", "schema": {"type": "string"}, "required": True}
CONTENT_DISPOSITION = {
    "description": 'attachment; filename="<the name as a slug>-<the first 8 characters of the id>.json" (or .md)',
    "schema": {"type": "string"},
    "required": True,
}


@bp.route("/", methods=["GET"])
@bp.arguments(ChatListQuerySchema, location="query")
@bp.response(200, ChatSchema(many=True), headers={"X-Total-Count": TOTAL_COUNT})
def list_chats(args):
    """List chats, most recently updated first; limit, offset and q (name contains) narrow it."""
    chats, total = Chat.page(**args)
    return chats, 200, {"X-Total-Count": str(total)}


@bp.route("/<chat_id>", methods=["GET"])
@bp.response(200, ChatSchema)
@bp.alt_response(404, response="NOT_FOUND")
def get_chat(chat_id):
    """Get one chat."""
    return owned_or_404(Chat, chat_id)


@bp.route("/create", methods=["POST"])
@bp.arguments(ChatCreateSchema)
@bp.response(201, ChatSchema, headers={"Location": LOCATION})
def create_chat(args):
    """Create a chat with the given name, and maybe a system prompt and a model of its own."""
    chat = Chat(name=args["name"], system_prompt=args.get("system_prompt"), model=args.get("model"))
    db.session.add(chat)
    db.session.commit()
    return chat, 201, {"Location": url_for("chats.get_chat", chat_id=chat.id)}


@bp.route("/delete/<chat_id>", methods=["DELETE"])
@bp.response(200, DeletedSchema)
@bp.alt_response(404, response="NOT_FOUND")
def delete_chat(chat_id):
    """Delete a chat and all its conversations; a reply being generated for it stops."""
    chat = owned_or_404(Chat, chat_id)
    db.session.delete(chat)
    db.session.commit()
    replies.deleted(chat.id)  # a running reply's end finds the chat gone and sends `error`, saving nothing
    return {"id": chat.id, "deleted": True}


@bp.route("/update/<chat_id>", methods=["PUT"])
@bp.arguments(ChatUpdateSchema)
@bp.response(200, ChatSchema)
@bp.alt_response(404, response="NOT_FOUND")
def update_chat(args, chat_id):
    """Rename a chat, set or clear its system prompt (null or blank), choose its model (null: the server's
    default), or more than one; updated_at is stored as given (normalised to UTC), else now."""
    chat = owned_or_404(Chat, chat_id)
    if "name" in args:
        chat.name = args["name"]
    if "system_prompt" in args:
        chat.system_prompt = args["system_prompt"]
    if "model" in args:
        chat.model = args["model"]
    chat.updated_at = args.get("updated_at") or utcnow()
    db.session.commit()
    return chat


@bp.route("/<chat_id>/conversations", methods=["GET"])
@bp.response(200, ConversationSchema(many=True))
@bp.alt_response(404, response="NOT_FOUND")
def list_chat_conversations(chat_id):
    """List a chat's conversations, oldest first."""
    return owned_or_404(Chat, chat_id).history()


@bp.route("/<chat_id>/conversations", methods=["DELETE"])
@bp.arguments(DeleteAfterQuerySchema, location="query")
@bp.response(200, DeletedAfterSchema)
@bp.alt_response(404, response="NOT_FOUND", description="The chat, or `after` among its conversations, is unknown.")
@bp.alt_response(409, description="A reply is being made for the chat: stop it first.", schema=ErrorSchema)
def delete_conversations_after(args, chat_id):
    """Delete every conversation of the chat after `after` (in the chat's order, oldest first), which stays:
    how an edited message is answered again."""
    chat = owned_or_404(Chat, chat_id)
    if replies.running(chat.id):
        abort(409, message=f"a reply is being made for chat {chat.id}: stop it first (POST /conversations/stop/...)")
    after = db.session.get(Conversation, args["after"])
    if after is None or after.chat_id != chat.id:
        abort(404, message=f"conversation {args['after']} not found in chat {chat.id}")
    deleted = chat.delete_after(after)
    db.session.commit()
    replies.forget(chat.id)
    return {"chat_id": chat.id, "deleted": deleted}


@bp.route("/<chat_id>/export", methods=["GET"])
@bp.arguments(ExportQuerySchema, location="query")
@bp.response(200, ChatExportSchema, headers={"Content-Disposition": CONTENT_DISPOSITION})
@bp.alt_response(200, content_type="text/markdown", schema={"type": "string"}, success=True)
@bp.alt_response(404, response="NOT_FOUND")
def export_chat(args, chat_id):
    """Download a chat: as JSON (format=json, the default), which POST /chats/import takes back, or as
    Markdown for people (format=markdown)."""
    chat = owned_or_404(Chat, chat_id)
    download = {"Content-Disposition": f'attachment; filename="{transfer.file_name(chat, args["format"])}"'}
    if args["format"] == "markdown":
        return Response(transfer.markdown(chat), content_type="text/markdown; charset=utf-8", headers=download)
    return transfer.export_document(chat), 200, download


@bp.route("/import", methods=["POST"])
@bp.arguments(ChatExportSchema)
@bp.response(201, ChatSchema, headers={"Location": LOCATION})
@bp.alt_response(
    413,
    schema=ErrorSchema,
    description="More messages than CHATAPI_MAX_IMPORT_MESSAGES (the message says how many may be imported), or a "
    "body larger than CHATAPI_MAX_BODY_BYTES; nothing is imported.",
)
def import_chat(args):
    """Make a new chat from a JSON export: new ids; the times, system prompt and web sources of the file. All
    of it or nothing: anything invalid is a 422 whose `errors` name it by path (conversations.3.role)."""
    chat = transfer.import_chat(args)
    db.session.commit()
    return chat, 201, {"Location": url_for("chats.get_chat", chat_id=chat.id)}

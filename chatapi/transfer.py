"""A chat as a file: its export as JSON (which POST /chats/import takes back) or Markdown, and its import."""

import re
import uuid

from werkzeug.utils import secure_filename

from .extensions import db
from .models import Chat, Conversation
from .schemas import timestamp_text

FORMAT_VERSION = 1
EXTENSIONS = {"json": "json", "markdown": "md"}


def export_document(chat: Chat) -> dict:
    """The chat and its conversations, oldest first, as ChatExportSchema dumps them."""
    return {"chatapi_export": FORMAT_VERSION, "chat": chat, "conversations": chat.history()}


def file_name(chat: Chat, format: str) -> str:
    """An ASCII name for the download: the chat's name as a slug, and the start of its id to tell chats apart."""
    slug = re.sub(r"[-_]+", "-", secure_filename(chat.name).lower()).strip("-.")[:60].rstrip("-.") or "chat"
    return f"{slug}-{str(chat.id)[:8]}.{EXTENSIONS[format]}"


def markdown(chat: Chat) -> str:
    """The chat for people to read: its name as a heading, its system prompt, then each message under its role
    and time, with an internet answer's sources as a numbered list of links."""
    parts = [f"# {' '.join(chat.name.split())}"]
    if chat.system_prompt:
        parts.append(f"**System prompt:**\n\n{chat.system_prompt.strip()}")
    for conversation in chat.history():
        parts.append(f"## {conversation.role} · {timestamp_text(conversation.created_at)}")
        parts.append(conversation.message.strip())
        if conversation.sources:
            links = [f"{source['n']}. {source_link(source)}" for source in conversation.sources]
            parts.append("Sources:\n\n" + "\n".join(links))
    return "\n\n".join(parts) + "\n"


def source_link(source: dict) -> str:
    """A Markdown link to a source: brackets in its title escaped, its URL in <> (which takes parentheses)."""
    title = " ".join(source["title"].split()) or source["url"]
    for character in "\\[]":
        title = title.replace(character, "\\" + character)
    url = source["url"].replace(" ", "%20").replace("<", "%3C").replace(">", "%3E")
    return f"[{title}](<{url}>)"


def import_chat(document: dict) -> Chat:
    """A new chat made from a loaded export (ChatExportSchema), added to the session for the caller to commit:
    new ids, the times and web sources of the file."""
    given = document["chat"]
    chat = Chat(name=given["name"], system_prompt=given["system_prompt"], model=model_here(given["model"]))
    db.session.add(chat)
    # New ids in increasing order: messages of the same millisecond keep the file's order (the chat's order
    # is by time, then id).
    ids = sorted(uuid.uuid4() for _ in document["conversations"])
    for new_id, given_conversation in zip(ids, document["conversations"], strict=True):
        conversation = Conversation(
            chat=chat,
            role=given_conversation["role"],
            message=given_conversation["message"],
            id=new_id,
            sources=given_conversation["sources"],
            citations=given_conversation["citations"],
            model=given_conversation["model"],
        )
        conversation.created_at = given_conversation["created_at"]
        conversation.updated_at = given_conversation["updated_at"]
        db.session.add(conversation)
    chat.created_at, chat.updated_at = given["created_at"], given["updated_at"]
    return chat


def model_here(model_id: str | None) -> str | None:
    """An imported chat's model where this server has it; else None (its default)."""
    from .llm.catalog import UnknownModel
    from .replies import service

    try:
        return service().resolve(model_id) if model_id is not None else None
    except UnknownModel:
        return None

"""With CHATAPI_OPENAI_STORE, a finished exchange of /v1 is stored as a chat, so that it shows in the page and the
chat API; off (the default), /v1 leaves nothing behind."""

import logging
from datetime import timedelta

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..llm.prompt import Message
from ..llm.reply import Reply
from ..models import Chat, Conversation, utcnow
from ..schemas import ConversationSchema

NAME_CHARS = 200  # a stored exchange's chat name: its first user message, cut to a chat name's length
log = logging.getLogger(__name__)


def store_exchange(
    app: Flask, owner: int | None, system_prompt: str, history: list[Message], reply: Reply
) -> dict | None:
    """With CHATAPI_OPENAI_STORE, store a finished exchange as a chat of the person who asked for it (`owner`;
    None while accounts are off), so that it shows in their page and chat API: their chat it continues (a client
    resends the whole conversation each turn), else a new one named after the first user message. The saved reply,
    or None. A database that fails is logged: the client still gets its completion, which is what it asked for."""
    if not app.config["CHATAPI_OPENAI_STORE"] or not reply.text:
        return None
    with app.app_context():
        try:
            chat, stored = continued_chat(owner, system_prompt, history)
            if chat is None:
                chat = Chat(chat_name(history), system_prompt.strip() or None)
                chat.owner_id = owner  # made after the request, outside it: the owner is given
                db.session.add(chat)
            # Apart by a microsecond each, so that the chat's order (created_at, id) is the conversation's.
            now = utcnow()
            added = [Conversation(chat, m.role, m.text) for m in history[stored:]]
            answer = Conversation(chat, "Assistant", reply.text, id=reply.message_id)
            for offset, conversation in enumerate([*added, answer]):
                conversation.created_at = conversation.updated_at = now + timedelta(microseconds=offset)
            chat.updated_at = answer.created_at
            db.session.add_all([*added, answer])
            db.session.commit()
            return ConversationSchema().dump(answer)
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("the chat completion could not be stored")
            return None
        finally:
            db.session.remove()


def chat_name(history: list[Message]) -> str:
    first = next(m.text for m in history if m.role == "Human")
    name = " ".join(first.split())
    return (name[: NAME_CHARS - 1] + "…" if len(name) > NAME_CHARS else name) or "Chat completion"


def continued_chat(owner: int | None, system_prompt: str, history: list[Message]) -> tuple[Chat | None, int]:
    """The owner's stored chat whose messages begin the conversation (the same name and system prompt), and how
    many of them it holds; (None, 0) when there is none."""
    system = system_prompt.strip() or None
    same_system = Chat.system_prompt.is_(None) if system is None else Chat.system_prompt == system
    same_owner = Chat.owner_id.is_not_distinct_from(owner)
    query = sa.select(Chat).where(Chat.name == chat_name(history), same_system, same_owner)
    query = query.order_by(Chat.updated_at.desc()).limit(5)
    wanted = [(m.role, m.text.strip()) for m in history]
    for chat in db.session.scalars(query):
        stored = [(c.role, c.message.strip()) for c in chat.history()]
        if 0 < len(stored) < len(wanted) and wanted[: len(stored)] == stored:
            return chat, len(stored)
    return None, 0

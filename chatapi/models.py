"""Chat and Conversation, and the queries the routes need."""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import g
from flask_smorest import abort

from .extensions import db
from .llm import prompt

ROLES = tuple(prompt.ROLES)  # a message's roles: the one role table's (chatapi/llm/prompt.py)


def utcnow() -> datetime:
    """Now in UTC, naive: every timestamp is stored as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def owner_id() -> int | None:
    """The id of the person asking, whose chats alone they reach; None while accounts are off (chatapi/auth.py
    sets g.person on every request that is not open)."""
    person = g.get("person")
    return person.id if person is not None else None


def owned(query: sa.Select) -> sa.Select:
    """The query narrowed to the asking person's chats: the one place that decides whose a chat is. Every route
    that names a chat or a message goes through it (owned_or_404, Chat.page); tests/test_people.py walks the
    URL map to check that none is left out."""
    person_id = owner_id()
    return query if person_id is None else query.where(Chat.owner_id == person_id)


def uuid_or_none(ident: str | uuid.UUID) -> uuid.UUID | None:
    """An id from a URL as a UUID; None when it is malformed (a 404 then, as for an unknown one)."""
    try:
        return ident if isinstance(ident, uuid.UUID) else uuid.UUID(ident)
    except ValueError:
        return None


def owned_or_404(model: type, ident: str | uuid.UUID):
    """The asking person's chat, or message (a Conversation of one of their chats), with this id; a 404 for an
    unknown or malformed id and for anyone else's, the same 404."""
    key = uuid_or_none(ident)
    query = sa.select(model).where(model.id == key)
    if model is Conversation:
        query = query.join(Chat, Conversation.chat_id == Chat.id)
    row = db.session.scalar(owned(query)) if key else None
    if row is None:
        abort(404, message=f"{model.__tablename__[:-1]} {ident} not found")
    return row


class Chat(db.Model):
    __tablename__ = "chats"

    id: so.Mapped[uuid.UUID] = so.mapped_column(primary_key=True, default=uuid.uuid4)
    name: so.Mapped[str] = so.mapped_column(sa.String(200))
    # Replaces CHATAPI_SYSTEM_PROMPT in this chat's replies; None: the server's.
    system_prompt: so.Mapped[str | None] = so.mapped_column(sa.Text)
    # Whose chat it is (chatapi/people.py); None: made while accounts were off, until the first admin takes it.
    owner_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    # The id of the model its replies use (chatapi/llm/catalog.py); None: the server's default (CHATAPI_MODEL).
    model: so.Mapped[str | None] = so.mapped_column(sa.String(1000))
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    updated_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)

    conversations: so.WriteOnlyMapped["Conversation"] = so.relationship(
        back_populates="chat", cascade="all, delete-orphan", passive_deletes=True
    )

    # Serves the list order (newest first, id as tie-break) straight from the index.
    # One person's list comes from the second.
    __table_args__ = (
        sa.Index("ix_chats_updated_at_id", "updated_at", "id"),
        sa.Index("ix_chats_owner_id_updated_at_id", "owner_id", "updated_at", "id"),
    )

    def __init__(self, name: str, system_prompt: str | None = None, model: str | None = None):
        """A new chat of the asking person's."""
        now = utcnow()
        super().__init__(
            name=name, system_prompt=system_prompt, model=model, owner_id=owner_id(), created_at=now, updated_at=now
        )

    @classmethod
    def page(cls, q: str | None = None, limit: int | None = None, offset: int = 0):
        """The asking person's chats whose name contains q, most recently updated first, and their total."""
        query = owned(sa.select(cls))
        if q:
            # lower(name) LIKE lower(q): on SQLite, the Unicode-aware lower() of chatapi/__init__.py.
            query = query.where(cls.name.icontains(q, autoescape=True))
        total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
        query = query.order_by(cls.updated_at.desc(), cls.id.desc()).offset(offset).limit(limit)
        return db.session.scalars(query).all(), total

    def history(self) -> list["Conversation"]:
        """The chat's conversations, oldest first."""
        query = self.conversations.select().order_by(*CONVERSATION_ORDER)
        return db.session.scalars(query).all()

    def delete_after(self, conversation: "Conversation") -> int:
        """Delete the chat's conversations that come after `conversation` in its order; how many."""
        later = sa.tuple_(*CONVERSATION_ORDER) > (conversation.created_at, conversation.id)
        query = sa.delete(Conversation).where(Conversation.chat_id == self.id, later)
        return db.session.execute(query, execution_options={"synchronize_session": False}).rowcount


class Conversation(db.Model):
    __tablename__ = "conversations"

    id: so.Mapped[uuid.UUID] = so.mapped_column(primary_key=True, default=uuid.uuid4)
    chat_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.ForeignKey("chats.id", ondelete="CASCADE"))
    role: so.Mapped[str] = so.mapped_column(sa.String(16))
    message: so.Mapped[str] = so.mapped_column(sa.Text)
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    updated_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    # The numbered web pages an internet-mode answer was grounded in; None on other messages.
    sources: so.Mapped[list[dict] | None] = so.mapped_column(sa.JSON)
    # Which sentence cites which of those pages ([{"start", "end", "n"}], offsets into `message`); None without sources.
    citations: so.Mapped[list[dict] | None] = so.mapped_column(sa.JSON)
    # The id of the model that wrote an Assistant message; None for Human messages and replies from before models.
    model: so.Mapped[str | None] = so.mapped_column(sa.String(1000))

    chat: so.Mapped[Chat] = so.relationship(back_populates="conversations")

    __table_args__ = (
        sa.Index("ix_conversations_chat_id_created_at", "chat_id", "created_at"),
        sa.CheckConstraint("role IN ('Human', 'Assistant')", name="role"),
    )

    def __init__(
        self,
        chat: Chat,
        role: str,
        message: str,
        id: uuid.UUID | None = None,
        sources: list[dict] | None = None,
        citations: list[dict] | None = None,
        model: str | None = None,
    ):
        now = utcnow()
        super().__init__(
            id=id or uuid.uuid4(),
            chat=chat,
            role=role,
            message=message,
            sources=sources,
            citations=citations,
            model=model,
            created_at=now,
            updated_at=now,
        )
        chat.updated_at = now

    def edit(self, message: str) -> None:
        """Replace the text; an edit counts as activity in the chat. Citations point into the old text, so they go."""
        self.message = message
        if self.citations:
            self.citations = []
        self.updated_at = utcnow()
        self.chat.updated_at = self.updated_at


# A chat's order, oldest first; the id orders messages of the same moment.
CONVERSATION_ORDER = (Conversation.created_at, Conversation.id)

"""Chat and Conversation, and the queries the routes need."""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask_smorest import abort

from .extensions import db
from .llm import prompt

ROLES = tuple(prompt.ROLES)  # a message's roles: the one role table's (chatapi/llm/prompt.py)


def utcnow() -> datetime:
    """Now in UTC, naive: every timestamp is stored as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def get_or_404(model: type, ident: str | uuid.UUID):
    """The row of model with this id, or a 404 for an unknown or malformed id."""
    try:
        key = ident if isinstance(ident, uuid.UUID) else uuid.UUID(ident)
    except ValueError:
        key = None
    row = db.session.get(model, key) if key else None
    if row is None:
        abort(404, message=f"{model.__tablename__[:-1]} {ident} not found")
    return row


class Chat(db.Model):
    __tablename__ = "chats"

    id: so.Mapped[uuid.UUID] = so.mapped_column(primary_key=True, default=uuid.uuid4)
    name: so.Mapped[str] = so.mapped_column(sa.String(200))
    # Replaces CHATAPI_SYSTEM_PROMPT in this chat's replies; None: the server's.
    system_prompt: so.Mapped[str | None] = so.mapped_column(sa.Text)
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    updated_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)

    conversations: so.WriteOnlyMapped["Conversation"] = so.relationship(
        back_populates="chat", cascade="all, delete-orphan", passive_deletes=True
    )

    # Serves the list order (newest first, id as tie-break) straight from the index.
    __table_args__ = (sa.Index("ix_chats_updated_at_id", "updated_at", "id"),)

    def __init__(self, name: str, system_prompt: str | None = None):
        now = utcnow()
        super().__init__(name=name, system_prompt=system_prompt, created_at=now, updated_at=now)

    @classmethod
    def page(cls, q: str | None = None, limit: int | None = None, offset: int = 0):
        """Chats whose name contains q, most recently updated first, and their total."""
        query = sa.select(cls)
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
    ):
        now = utcnow()
        super().__init__(
            id=id or uuid.uuid4(),
            chat=chat,
            role=role,
            message=message,
            sources=sources,
            citations=citations,
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

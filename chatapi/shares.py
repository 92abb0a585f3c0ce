"""Read-only share links: `/s/<token>` shows a chat as it was when the link was made, to anyone, without a key or a
session, until the link expires or is revoked.

A link holds a snapshot (the chat's export document, chatapi/transfer.py), so later messages, edits and deletions
do not show, and nothing but that snapshot is reachable with the token. The token is 32 random bytes; the server
keeps only its SHA-256, and it is shown once, in the answer that makes the link. Unknown, expired and revoked
tokens get the same 404; a link goes with its chat, and stops working while the chat's owner is disabled.
The token never reaches a log: gunicorn.conf.py takes it out of the access log's lines.
"""

import json
import secrets
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import Response, current_app, jsonify, request, url_for
from flask_smorest import abort

from . import people, transfer
from .extensions import db
from .models import Chat, owned_or_404, utcnow, uuid_or_none
from .openapi import Blueprint, ErrorSchema
from .pages import CONTENT_SECURITY_POLICY
from .schemas import ChatExportSchema, DeletedSchema
from .share_schemas import NewShareSchema, ShareCreateSchema, SharedChatQuerySchema, ShareSchema

MAX_LIVE_SHARES = 20  # per chat: links that have not expired
# Each link keeps a copy of the chat: a request of a few bytes may not copy more than this (as JSON), and a chat
# holds at most MAX_LIVE_SHARES copies.
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024
TOKEN_BYTES = 32
NOT_FOUND = "this share link does not exist, has expired or was revoked"
# The shared page's headers (its 404 too): the chat page's policy; kept out of search engines and caches; and no
# Referer from it, so that a link clicked on it (a source) does not carry the token to another site.
SHARED_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

bp = Blueprint("shares", __name__, description="Share links: a chat, read-only, to anyone with the link")


class Share(db.Model):
    __tablename__ = "shares"

    id: so.Mapped[uuid.UUID] = so.mapped_column(primary_key=True, default=uuid.uuid4)
    chat_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    token_hash: so.Mapped[str] = so.mapped_column(sa.String(64))  # SHA-256 of the token, hex: never the token
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    expires_at: so.Mapped[datetime | None]  # None: until revoked
    # The chat's export document (ChatExportSchema, dumped) when the link was made.
    snapshot: so.Mapped[dict] = so.mapped_column(sa.JSON)

    # Named here, not by the naming convention, so that a copy of the metadata keeps the name (tests/test_migrations).
    __table_args__ = (sa.UniqueConstraint("token_hash", name="uq_shares_token_hash"),)


def live(now: datetime):
    """The condition of a link that has not expired."""
    return sa.or_(Share.expires_at.is_(None), Share.expires_at > now)


class ShareRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def make_share(chat: Chat, expires_in: int | None) -> tuple[Share, str]:
    """A new link to the chat as it is now, added to the session: the row, and the token (never stored). The chat's
    expired links go. Refused (ShareRefused) when it has MAX_LIVE_SHARES live ones, or is larger than
    MAX_SNAPSHOT_BYTES."""
    now = utcnow()
    db.session.execute(sa.delete(Share).where(Share.chat_id == chat.id, sa.not_(live(now))))
    count = db.session.scalar(sa.select(sa.func.count(Share.id)).where(Share.chat_id == chat.id))
    if count >= MAX_LIVE_SHARES:
        raise ShareRefused(
            409, f"chat {chat.id} has {MAX_LIVE_SHARES} live share links, as many as a chat may: revoke one"
        )
    snapshot = ChatExportSchema().dump(transfer.export_document(chat))
    size = len(json.dumps(snapshot, ensure_ascii=False).encode())
    if size > MAX_SNAPSHOT_BYTES:
        raise ShareRefused(
            413, f"chat {chat.id} is {size:,} bytes as JSON, more than a link may copy ({MAX_SNAPSHOT_BYTES:,})"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    share = Share(
        chat_id=chat.id,
        token_hash=people.digest(token),
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        snapshot=snapshot,
    )
    db.session.add(share)
    return share, token


def find_live(token: str) -> Share | None:
    """The live link with this token, or None: unknown, expired, revoked (deleted), or its chat's owner disabled.
    Looked up by the token's hash alone."""
    query = (
        sa.select(Share)
        .join(Chat, Share.chat_id == Chat.id)
        .outerjoin(people.User, Chat.owner_id == people.User.id)
        .where(Share.token_hash == people.digest(token), live(utcnow()), people.User.disabled_at.is_(None))
    )
    return db.session.scalar(query)


@bp.route("/chats/<chat_id>/shares", methods=["POST"])
@bp.arguments(ShareCreateSchema)
@bp.response(201, NewShareSchema)
@bp.alt_response(404, response="NOT_FOUND")
@bp.alt_response(409, description=f"The chat has {MAX_LIVE_SHARES} live links already.", schema=ErrorSchema)
@bp.alt_response(413, description=f"The chat is larger than {MAX_SNAPSHOT_BYTES:,} bytes as JSON.", schema=ErrorSchema)
def create_share(args, chat_id):
    """Make a read-only link to the chat as it is now (a snapshot: later messages, edits and deletions do not
    show), for anyone who has it, without a key or a session, until it expires (expires_in seconds; null: never)
    or is revoked. `url` (/s/<token>) is shown this once: the server keeps only a hash of the token. At most
    20 live links a chat, each of a chat of at most 8 MB as JSON."""
    chat = owned_or_404(Chat, chat_id)
    try:
        share, token = make_share(chat, args["expires_in"])
    except ShareRefused as exc:
        db.session.rollback()
        abort(exc.status, message=str(exc))
    db.session.commit()
    return {
        "id": share.id,
        "url": url_for("shares.shared_chat", token=token),
        "created_at": share.created_at,
        "expires_at": share.expires_at,
    }, 201


@bp.route("/chats/<chat_id>/shares", methods=["GET"])
@bp.response(200, ShareSchema(many=True))
@bp.alt_response(404, response="NOT_FOUND")
def list_shares(chat_id):
    """The chat's live links (not expired, not revoked), newest first; without their URLs, which the server does
    not keep."""
    chat = owned_or_404(Chat, chat_id)
    query = sa.select(Share).where(Share.chat_id == chat.id, live(utcnow()))
    return db.session.scalars(query.order_by(Share.created_at.desc(), Share.id.desc())).all()


@bp.route("/chats/<chat_id>/shares/<share_id>", methods=["DELETE"])
@bp.response(200, DeletedSchema)
@bp.alt_response(404, response="NOT_FOUND", description="The chat, or the link among the chat's, is unknown.")
def delete_share(chat_id, share_id):
    """Revoke a link: it stops working at once (a 404, as for a link that never was)."""
    chat = owned_or_404(Chat, chat_id)
    key = uuid_or_none(share_id)
    share = db.session.get(Share, key) if key else None
    if share is None or share.chat_id != chat.id:
        abort(404, message=f"share link {share_id} not found in chat {chat.id}")
    db.session.delete(share)
    db.session.commit()
    return {"id": share.id, "deleted": True}


@bp.route("/s/<path:token>", methods=["GET"])
@bp.arguments(SharedChatQuerySchema, location="query")
@bp.response(200, ChatExportSchema, description="format=json: the chat as it was shared, its export document.")
@bp.alt_response(
    200,
    content_type="text/html",
    schema={"type": "string"},
    success=True,
    description="format=html: a read-only page that shows it (it fetches ?format=json).",
)
@bp.alt_response(404, response="NOT_FOUND", description="Unknown, expired or revoked: the same answer.")
@bp.doc(security=[])
def shared_chat(args, token):
    """A shared chat, to anyone with the link (no key or session): a read-only page (format=html, the default) or
    the chat's export document as it was when the link was made (format=json). Kept out of search engines and
    caches; the page sends no Referer."""
    share = find_live(token)
    if share is None:
        abort(404, message=NOT_FOUND)
    if args["format"] == "json":
        return jsonify(share.snapshot)
    return current_app.send_static_file("shared.html")


@bp.after_request
def protect_shared_page(response: Response) -> Response:
    """The shared page's headers on everything /s/<token> answers, its 404s included."""
    if request.endpoint == "shares.shared_chat":
        response.headers.update(SHARED_PAGE_HEADERS)
    return response

"""People: who may use the server, their passwords, their API keys, their sessions and their daily usage.

Accounts are on as soon as a person exists (or CHATAPI_API_KEYS names a key: those keys act as the admin named
`admin`); then each chat belongs to one person (chatapi/models.py `owned_or_404`). The functions here add and
change rows; their callers commit.
"""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa
import sqlalchemy.orm as so
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask_smorest import abort

from .extensions import db
from .models import Chat, utcnow

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_LABEL_CHARS = 100
MAX_PEOPLE = 1000  # people are few: bounds the People panel, the metrics' labels and the admin's lists
MAX_KEYS = 100  # live keys per person
MAX_SESSIONS = 20  # a person's newest sessions are kept; older ones end
KEY_PREFIX = "chatapi-"
PUBLIC_PREFIX_CHARS = 12  # chatapi-XXXX: shown in lists, no secret
MAX_ID = 2**31 - 1  # people, keys: an Integer column, 32-bit on PostgreSQL
KEY_ADMIN = "admin"  # the person CHATAPI_API_KEYS's keys act as
# A key's last use is written at most this often: not a write on every request.
LAST_USED_EVERY = timedelta(minutes=1)

# argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile: 3 passes over 64 MiB).
hasher = PasswordHasher()


@dataclass(frozen=True)
class Person:
    """Who is asking (g.person): what every check needs, without a database row."""

    id: int
    name: str
    admin: bool


class User(db.Model):
    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(64))
    # None: no password (the admin that CHATAPI_API_KEYS's keys act as signs in with a key only).
    password_hash: so.Mapped[str | None] = so.mapped_column(sa.String(200))
    admin: so.Mapped[bool] = so.mapped_column(default=False)
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    disabled_at: so.Mapped[datetime | None]

    # Named here, not by the naming convention, so that a copy of the metadata keeps the name (tests/test_migrations).
    __table_args__ = (sa.UniqueConstraint("name", name="uq_users_name"),)

    def person(self) -> Person:
        return Person(self.id, self.name, self.admin)


class ApiKey(db.Model):
    __tablename__ = "api_keys"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: so.Mapped[str] = so.mapped_column(sa.String(64))  # SHA-256 of the key: never the key
    prefix: so.Mapped[str] = so.mapped_column(sa.String(PUBLIC_PREFIX_CHARS))
    label: so.Mapped[str] = so.mapped_column(sa.String(MAX_LABEL_CHARS), default="")
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    last_used_at: so.Mapped[datetime | None]
    revoked_at: so.Mapped[datetime | None]

    user: so.Mapped[User] = so.relationship()

    __table_args__ = (sa.UniqueConstraint("digest", name="uq_api_keys_digest"),)


class SignIn(db.Model):
    """A session: the cookie holds a random token, this row its digest. Deleting the row ends the session."""

    __tablename__ = "sessions"

    id: so.Mapped[str] = so.mapped_column(sa.String(64), primary_key=True)  # SHA-256 of the cookie's token
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The key it was opened with: revoking the key ends it. env_key_id: a CHATAPI_API_KEYS key's public id.
    api_key_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("api_keys.id", ondelete="CASCADE"))
    env_key_id: so.Mapped[str | None] = so.mapped_column(sa.String(12))
    created_at: so.Mapped[datetime] = so.mapped_column(default=utcnow)
    expires_at: so.Mapped[datetime]

    user: so.Mapped[User] = so.relationship()
    api_key: so.Mapped[ApiKey | None] = so.relationship()


class Usage(db.Model):
    """Tokens in and out, and replies, per person per UTC day."""

    __tablename__ = "usage"

    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: so.Mapped[date] = so.mapped_column(primary_key=True)
    prompt_tokens: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    completion_tokens: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    replies: so.Mapped[int] = so.mapped_column(default=0)


def by_id(model: type, ident: int):
    """The row of a people table with this id, or None; the ids are PostgreSQL integers (32-bit), so a larger one,
    which the database could not even compare, is nobody's."""
    return db.session.get(model, ident) if 0 <= ident <= MAX_ID else None


def user_or_404(user_id: int) -> User:
    user = by_id(User, user_id)
    if user is None:
        abort(404, message=f"user {user_id} not found")
    return user


def digest(text: str) -> str:
    # Lone surrogates can come in JSON bodies; they must not turn a wrong key into a crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def people_exist() -> bool:
    return db.session.scalar(sa.select(sa.exists().where(User.id.is_not(None)))) or False


def find_user(name: str) -> User | None:
    return db.session.scalar(sa.select(User).where(User.name == name.strip().lower()))


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not NAME.match(name):
        raise ValueError(
            "a name is 1 to 64 lower-case letters, digits, '.', '_' or '-', beginning with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValueError(f"a password is {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def hash_password(password: str) -> str:
    return hasher.hash(check_password(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether the password is the one hashed. Without a hash (no such person, or none with a password) a stand-in
    hash is checked all the same, so that a wrong name takes as long as a wrong password."""
    try:
        hasher.verify(stored_hash or stand_in_hash(), password.encode("utf-8", "surrogatepass"))
    except (VerificationError, InvalidHashError):
        return False
    return stored_hash is not None


_stand_in: list[str] = []


def stand_in_hash() -> str:
    if not _stand_in:
        _stand_in.append(hasher.hash(secrets.token_urlsafe(16)))
    return _stand_in[0]


def create_user(name: str, password: str | None, admin: bool = False) -> User:
    """A new person; ValueError (its message says why) for a name that is taken or malformed, a bad password, or
    one person too many. The first admin is given the chats made while accounts were off."""
    name = check_name(name)
    if find_user(name) is not None:
        raise ValueError(f"the name {name!r} is taken")
    if db.session.scalar(sa.select(sa.func.count(User.id))) >= MAX_PEOPLE:
        raise ValueError(f"this server has {MAX_PEOPLE} people, as many as it takes")
    user = User(name=name, password_hash=hash_password(password) if password is not None else None, admin=admin)
    db.session.add(user)
    db.session.flush()
    if admin:
        adopt_ownerless_chats(user)
    return user


def adopt_ownerless_chats(admin: User) -> None:
    """Chats made while accounts were off (owner NULL, also those an upgrade found) go to the first admin."""
    db.session.execute(sa.update(Chat).where(Chat.owner_id.is_(None)).values(owner_id=admin.id))


def set_password(user: User, password: str) -> None:
    """A new password; every session of the person ends."""
    user.password_hash = hash_password(password)
    end_sessions(user.id)


def disable(user: User) -> None:
    """The person can no longer sign in, and their sessions end; their keys stop working (checked on use)."""
    user.disabled_at = user.disabled_at or utcnow()
    end_sessions(user.id)


def active_admins() -> int:
    return db.session.scalar(sa.select(sa.func.count(User.id)).where(User.admin, User.disabled_at.is_(None)))


def key_admin() -> User:
    """The admin that CHATAPI_API_KEYS's keys act as, made if missing."""
    user = find_user(KEY_ADMIN)
    if user is None:
        user = create_user(KEY_ADMIN, None, admin=True)
    elif not user.admin or user.disabled_at is not None:
        user.admin, user.disabled_at = True, None  # the keys in the configuration say so
        adopt_ownerless_chats(user)
    return user


def new_key(user: User, label: str = "") -> tuple[ApiKey, str]:
    """A new key of the person's: the row, and the key itself, which is shown once and never stored."""
    live = sa.select(sa.func.count(ApiKey.id)).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
    if db.session.scalar(live) >= MAX_KEYS:
        raise ValueError(f"{user.name} has {MAX_KEYS} keys, as many as a person may: revoke one first")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(user=user, digest=digest(secret), prefix=secret[:PUBLIC_PREFIX_CHARS], label=label.strip())
    db.session.add(key)
    db.session.flush()
    return key, secret


def revoke_key(key: ApiKey) -> None:
    """The key stops working at once, and so do the sessions opened with it."""
    key.revoked_at = key.revoked_at or utcnow()
    db.session.execute(sa.delete(SignIn).where(SignIn.api_key_id == key.id))


def find_key(secret: str) -> ApiKey | None:
    """The live key of an active person, or None; its last use is noted (at most once a minute)."""
    query = sa.select(ApiKey).where(ApiKey.digest == digest(secret)).options(so.joinedload(ApiKey.user))
    key = db.session.scalar(query)
    if key is None or key.revoked_at is not None or key.user.disabled_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
        key.last_used_at = now
        db.session.commit()
    return key


def open_session(user: User, seconds: int, api_key: ApiKey | None = None, env_key_id: str | None = None) -> str:
    """A new session of the person's: the cookie's token (only its digest is stored). Expired sessions go, and
    the person keeps at most MAX_SESSIONS."""
    now = utcnow()
    db.session.execute(sa.delete(SignIn).where(SignIn.expires_at <= now))
    kept = sa.select(SignIn.id).where(SignIn.user_id == user.id).order_by(SignIn.created_at.desc())
    kept = kept.limit(MAX_SESSIONS - 1).scalar_subquery()
    db.session.execute(sa.delete(SignIn).where(SignIn.user_id == user.id, SignIn.id.not_in(kept)))
    token = secrets.token_urlsafe(32)
    db.session.add(
        SignIn(
            id=digest(token),
            user=user,
            api_key_id=api_key.id if api_key else None,
            env_key_id=env_key_id,
            created_at=now,
            expires_at=now + timedelta(seconds=seconds),
        )
    )
    return token


def find_session(token: str) -> SignIn | None:
    """The live session of an active person the token opens, or None."""
    query = sa.select(SignIn).where(SignIn.id == digest(token)).options(so.joinedload(SignIn.user))
    found = db.session.scalar(query)
    if found is None or found.expires_at <= utcnow() or found.user.disabled_at is not None:
        return None
    return found


def end_session(token: str) -> None:
    db.session.execute(sa.delete(SignIn).where(SignIn.id == digest(token)))


def end_sessions(user_id: int) -> None:
    db.session.execute(sa.delete(SignIn).where(SignIn.user_id == user_id))

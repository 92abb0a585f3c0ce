"""People over the API: one's own account and keys (/me), and for admins everyone's (/users).

Admins manage people; they do not read them: an admin's chats are their own, as anyone's (chatapi/models.py).
While nobody exists (accounts are off), /users is open to whoever reaches the box (a loopback one,
gunicorn.conf.py), so that the first person can be made over the API as well as with `flask users create`.
"""

import sqlalchemy as sa
from flask import make_response, request, url_for
from flask_smorest import abort
from sqlalchemy.exc import IntegrityError

from . import auth, limits, people, replies
from .account_schemas import (
    KeyCreateSchema,
    KeySchema,
    NewKeySchema,
    PasswordChangeSchema,
    PersonSchema,
    RevokedSchema,
    UserCreateSchema,
    UserDeletedSchema,
    UserSchema,
    UserUpdateSchema,
)
from .extensions import db
from .models import Chat
from .openapi import Blueprint, ErrorSchema
from .people import ApiKey, User

me = Blueprint("me", __name__, url_prefix="/me", description="One's own account and API keys")
users = Blueprint("users", __name__, url_prefix="/users", description="People: for admins")

LOCATION = {"description": "the new person's URL", "schema": {"type": "string"}, "required": True}
CONFLICT = "It would leave the server without an active admin, or the name is taken."


@me.before_request
def require_person() -> None:
    auth.person_or_404()


def signed_in_user() -> User:
    return db.session.get(User, auth.current_person().id)


@me.route("", methods=["GET"])
@me.response(200, PersonSchema)
@me.alt_response(404, response="NOT_FOUND", description="The server has no accounts.")
def get_me():
    """Who is signed in."""
    return auth.current_person()


@me.route("/password", methods=["PUT"])
@me.arguments(PasswordChangeSchema)
@me.response(204, description="Changed: every session of the person ended; the caller's session is a new one.")
@me.alt_response(403, description="The current password is wrong.", schema=ErrorSchema)
@me.alt_response(404, response="NOT_FOUND", description="The server has no accounts.")
def change_password(args):
    """Change one's password (the current one is required when there is one). Every session ends; a caller
    that came with a session gets a new one."""
    user = signed_in_user()
    current = args.get("current_password") or ""
    if user.password_hash is not None:
        # A copied cookie must not make the password guessable: limited as a sign-in by name is.
        with auth.one_try_at_a_time(user.name):
            limits.refuse_guessing(user.name)
            if not auth.password_matches(user.password_hash, current):
                limits.count_auth_failure(user.name)
                abort(403, message="the current password is wrong")
    # The caller's new session is opened with what the old one was (a key's ends when the key does).
    session = people.find_session(request.cookies.get(auth.COOKIE) or "")
    opened_with = (session.api_key, session.env_key_id) if session is not None else None
    people.set_password(user, args["password"])
    db.session.commit()
    response = make_response("", 204)
    if opened_with is not None:
        return auth.signed_in(response, user, *opened_with)
    return response


@me.route("/keys", methods=["POST"])
@me.arguments(KeyCreateSchema)
@me.response(201, NewKeySchema)
@me.alt_response(404, response="NOT_FOUND", description="The server has no accounts.")
@me.alt_response(409, description=f"{people.MAX_KEYS} live keys already.", schema=ErrorSchema)
def create_key(args):
    """Make an API key: it is in this answer once, and never shown again (only its prefix)."""
    try:
        key, secret = people.new_key(signed_in_user(), args["label"])
    except ValueError as exc:
        abort(409, message=str(exc))
    db.session.commit()
    return {**{name: getattr(key, name) for name in KeySchema().fields}, "key": secret}, 201


@me.route("/keys", methods=["GET"])
@me.response(200, KeySchema(many=True))
@me.alt_response(404, response="NOT_FOUND", description="The server has no accounts.")
def list_keys():
    """One's keys, newest first, without their secrets."""
    query = sa.select(ApiKey).where(ApiKey.user_id == auth.current_person().id)
    return db.session.scalars(query.order_by(ApiKey.created_at.desc(), ApiKey.id.desc())).all()


@me.route("/keys/<int:key_id>", methods=["DELETE"])
@me.response(200, RevokedSchema)
@me.alt_response(404, response="NOT_FOUND")
def revoke_key(key_id: int):
    """Revoke one of one's keys: it stops working at once, and so do the sessions opened with it."""
    key = people.by_id(ApiKey, key_id)
    if key is None or key.user_id != auth.current_person().id:
        abort(404, message=f"key {key_id} not found")
    people.revoke_key(key)
    db.session.commit()
    return {"id": key.id, "revoked": True}


@users.before_request
def require_admin() -> None:
    """Admins only, once accounts are on; while they are off, whoever reaches the box is in charge."""
    person = auth.current_person()
    if person is not None and not person.admin:
        abort(403, message="only an admin manages people")


def refuse_without_admin(user: User) -> None:
    """409 when the change would leave no active admin: nobody could manage people any more."""
    if user.admin and user.disabled_at is None and people.active_admins() <= 1:
        abort(409, message=f"{user.name} is the last active admin: make another admin first")


@users.route("", methods=["GET"])
@users.response(200, UserSchema(many=True))
def list_users():
    """Everyone, by name."""
    return db.session.scalars(sa.select(User).order_by(User.name)).all()


@users.route("", methods=["POST"])
@users.arguments(UserCreateSchema)
@users.response(201, UserSchema, headers={"Location": LOCATION})
@users.alt_response(409, description="The name is taken.", schema=ErrorSchema)
def create_user(args):
    """Add a person (an admin with `admin`: true). The first person made over an open box (nobody exists yet) is an
    admin whatever `admin` says: else accounts would come on with nobody to manage them. The first admin is given
    the chats made while accounts were off."""
    admin = args["admin"] or auth.current_person() is None
    try:
        user = people.create_user(args["name"], args["password"], admin)
        db.session.commit()
    except ValueError as exc:  # the name is taken, or the server has as many people as it takes
        abort(409, message=str(exc))
    except IntegrityError:  # another request took the name between the check and the commit
        db.session.rollback()
        abort(409, message=f"the name {args['name'].strip().lower()!r} is taken")
    return user, 201, {"Location": url_for("users.get_user", user_id=user.id)}


@users.route("/<int:user_id>", methods=["GET"])
@users.response(200, UserSchema)
@users.alt_response(404, response="NOT_FOUND")
def get_user(user_id: int):
    """One person."""
    return people.user_or_404(user_id)


@users.route("/<int:user_id>", methods=["PUT"])
@users.arguments(UserUpdateSchema)
@users.response(200, UserSchema)
@users.alt_response(404, response="NOT_FOUND")
@users.alt_response(409, description=CONFLICT, schema=ErrorSchema)
def update_user(args, user_id: int):
    """Disable a person (their sessions end, their keys stop) or enable them again, make them an admin or not,
    or give them a new password (their sessions end)."""
    user = people.user_or_404(user_id)
    if args.get("disabled") is True or args.get("admin") is False:
        refuse_without_admin(user)
    if "disabled" in args:
        if args["disabled"]:
            people.disable(user)
        else:
            user.disabled_at = None
    if "admin" in args:
        user.admin = args["admin"]
        if user.admin:
            people.adopt_ownerless_chats(user)
    if "password" in args:
        people.set_password(user, args["password"])
    db.session.commit()
    return user


@users.route("/<int:user_id>", methods=["DELETE"])
@users.response(200, UserDeletedSchema)
@users.alt_response(404, response="NOT_FOUND")
@users.alt_response(409, description=CONFLICT, schema=ErrorSchema)
def delete_user(user_id: int):
    """Delete a person, with their chats, keys and sessions; their running replies stop."""
    user = people.user_or_404(user_id)
    refuse_without_admin(user)
    chat_ids = db.session.scalars(sa.select(Chat.id).where(Chat.owner_id == user.id)).all()
    db.session.delete(user)
    db.session.commit()
    for chat_id in chat_ids:
        replies.deleted(chat_id)  # a running reply's end finds the chat gone and saves nothing
    return {"id": user_id, "deleted": True}

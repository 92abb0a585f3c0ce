"""Who is asking: a person's API key (`Authorization: Bearer <key>`) or their session cookie (POST /session, with a
name and password or a key). Where a request comes from is chatapi/guard.py's to judge, before this: with the
cookie, a request that changes something must come from this server's own page.

Accounts are on as soon as a person exists (chatapi/people.py) or CHATAPI_API_KEYS / CHATAPI_API_KEYS_FILE names
a key (config.py reads them; those keys act as the admin named `admin`). Then every request but the open ones
below must carry a key or a session, and `g.person` says whose it is: their chats alone are theirs to reach
(chatapi/models.py `owned`), and rate limits count per person. On a fresh box with nobody, `g.person` is None and
the server is open, as the API document has it (gunicorn.conf.py serves such a box on loopback only).
"""

import hashlib
import hmac
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from typing import NoReturn, TypeVar

import gevent
import gevent.lock
from flask import Flask, Response, current_app, g, make_response, request
from flask_smorest import abort
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, Unauthorized

from . import limits, people
from .account_schemas import SessionSchema
from .extensions import db
from .openapi import Blueprint
from .people import Person

COOKIE = "chatapi_session"
# A random key this long cannot be guessed; CHATAPI_RATE_LIMIT_AUTH_FAILURES slows the guessing of a chosen one.
MIN_KEY_CHARS = 16
# Open to anyone who can reach the server: the health check (load balancers and monitors), the page and its
# files (it asks for a key itself), sign-in and sign-out, the API document with its page (they describe
# the routes, which are no secret, and the docs page needs the document to offer its "Authorize" button), and a
# shared chat (/s/<token>: the token is what opens it, chatapi/shares.py).
OPEN_ENDPOINTS = frozenset(
    {
        "health.health",
        "pages.index",
        "static",
        "session.open_session",
        "session.close_session",
        "api-docs.openapi_json",
        "api-docs.openapi_swagger_ui",
        "docs_assets.static",
        "shares.shared_chat",
    }
)
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="chatapi"'}
# What the OpenAPI document says about it: accounts can come on at any time (a person is made).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (POST /me/keys, or CHATAPI_API_KEYS)"},
    "session": {"type": "apiKey", "in": "cookie", "name": COOKIE, "description": "set by POST /session"},
}
WRONG_SIGN_IN = "the name or the password is wrong"  # the same for both: a stranger learns no names

T = TypeVar("T")

bp = Blueprint("session", __name__, description="Sessions: the browser page's sign-in")


def key_id(key: str) -> str:
    """A configured key's public name: the first 12 hex digits of its SHA-256 (`printf %s KEY | sha256sum`)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ConfiguredKeys:
    """The keys of CHATAPI_API_KEYS, known by their digests and ids: they act as the admin named `admin`."""

    def __init__(self, keys: tuple[str, ...]):
        self.by_digest = {people.digest(key): key_id(key) for key in keys}
        self.ids = frozenset(self.by_digest.values())
        # What the database last said of whether anyone exists (None: not asked yet): believed while it cannot
        # be read, when it said nobody.
        self.people_seen: bool | None = None

    def __bool__(self) -> bool:
        return bool(self.by_digest)

    def find(self, presented: str) -> str | None:
        """The id of the key presented, or None. Every key is compared, each in constant time."""
        presented = people.digest(presented)
        found = None
        for known, known_id in self.by_digest.items():
            if hmac.compare_digest(presented, known):
                found = known_id
        return found


def check_key_lengths(keys: tuple[str, ...]) -> None:
    """ValueError (the server does not start) for a key short enough to guess; it is named by its id only."""
    short = [key_id(key) for key in keys if len(key) < MIN_KEY_CHARS]
    if short:
        raise ValueError(
            f"CHATAPI_API_KEYS (or CHATAPI_API_KEYS_FILE) holds {len(short)} key(s) shorter than {MIN_KEY_CHARS} "
            f"characters (ids {', '.join(short)}): keys must be long enough not to be guessed; make one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def init_app(app: Flask) -> None:
    """Call it before any other extension registers a request hook (the rate limiter reads g.person) and before
    the Api is set up (the document's security)."""
    check_key_lengths(app.config["CHATAPI_API_KEYS"])
    app.extensions["auth"] = ConfiguredKeys(app.config["CHATAPI_API_KEYS"])
    people.stand_in_hash()  # made now, so that the first wrong name takes no longer than any other
    app.before_request(authenticate)
    options = dict(app.config.get("API_SPEC_OPTIONS") or {})  # may be a class attribute shared by every app
    components = dict(options.get("components") or {})
    components["securitySchemes"] = {**components.get("securitySchemes", {}), **SECURITY_SCHEMES}
    options["components"] = components
    options["security"] = [{name: []} for name in SECURITY_SCHEMES]
    app.config["API_SPEC_OPTIONS"] = options


def configured_keys() -> ConfiguredKeys:
    return current_app.extensions["auth"]


def accounts_on() -> bool:
    """Whether requests must say who they are: a key is configured, or a person exists. While the database cannot
    be read, a box whose database said last that nobody exists stays open (its /health tells why, and /v1 needs no
    database); otherwise the error goes on (a 503): who is asking cannot be known, and nothing is served openly."""
    keys = configured_keys()
    if keys:
        return True
    try:
        keys.people_seen = people.people_exist()
    except SQLAlchemyError:
        db.session.rollback()
        if keys.people_seen is not False:
            raise
    return keys.people_seen


def current_person() -> Person | None:
    """Who is asking; None while accounts are off."""
    return g.get("person")


def person_or_404() -> Person:
    """Who is asking; 404 while accounts are off (nobody is signed in): /me and its routes."""
    person = current_person()
    if person is None:
        abort(404, message="this server has no accounts: nobody is signed in")
    return person


def unauthorized(message: str) -> NoReturn:
    abort(401, message=message, headers=WWW_AUTHENTICATE)


def authenticate() -> None:
    """Before every request: who is asking (g.person), else 401. Nothing has been read or done yet."""
    g.person = None
    # A CORS preflight carries no credentials by design, and changes nothing.
    if request.endpoint in OPEN_ENDPOINTS or request.method == "OPTIONS":
        return
    header, cookie = request.headers.get("Authorization"), request.cookies.get(COOKIE)
    if header is None and cookie is None:  # nothing to check, so nothing guessed: not counted
        if accounts_on():
            unauthorized("an API key is required: send Authorization: Bearer <key>, or sign in with POST /session")
        return
    if not accounts_on():  # an open box ignores credentials, as it always has
        return
    g.person = checked(lambda: presented_person(header, cookie))


def checked(check: Callable[[], T], name: str | None = None) -> T:
    """What a check of credentials finds. Guessing is limited per client address, and per name for a sign-in with a
    password (CHATAPI_RATE_LIMIT_AUTH_FAILURES): 429 once it is over, before anything is checked; else the check's
    401 counts against it."""
    with one_try_at_a_time(name):
        limits.refuse_guessing(name)
        try:
            return check()
        except Unauthorized:
            limits.count_auth_failure(name)
            raise


# argon2 takes long enough that password tries sent at once would all pass the limit's test before the first
# failure is counted: tries from one address, or for one name, are checked one at a time (in this process; the
# locks are shared by stripes of addresses and names, so that they are bounded). Keys and sessions need none.
TRY_LOCKS = tuple(gevent.lock.Semaphore() for _ in range(64))


@contextmanager
def one_try_at_a_time(name: str | None):
    if name is None:
        yield
        return
    stripes = sorted({hash(("address", request.remote_addr)) % len(TRY_LOCKS), hash(("name", name)) % len(TRY_LOCKS)})
    with ExitStack() as held:  # taken in order: no two tries wait for each other's
        for stripe in stripes:
            held.enter_context(TRY_LOCKS[stripe])
        yield


def presented_person(header: str | None, cookie: str | None) -> Person:
    """The person of the key in the Authorization header, else of the session cookie; 401 when it is not valid."""
    return person_from_header(header) if header is not None else person_from_cookie(cookie)


def may_see_details() -> bool:
    """Whether an open route may say more than a stranger is told (/health: the database's error, the model's path):
    always while accounts are off (whoever reaches the server may use all of it), else with a valid key or session.
    A wrong one counts as anywhere, and over the limit nothing is checked: the route answers for a stranger."""
    header, cookie = request.headers.get("Authorization"), request.cookies.get(COOKIE)
    try:
        limits.refuse_guessing()  # over the limit, nothing is checked: not even a configured key
    except HTTPException:
        return False
    if header is not None and configured_keys().find(header.strip().partition(" ")[2].strip()) is not None:
        return True  # known without the database, which may be what /health is reporting on
    try:
        if not accounts_on():
            return True
        if header is None and cookie is None:
            return False
        checked(lambda: presented_person(header, cookie))
    except (HTTPException, SQLAlchemyError):  # 401 or 429; or a database that cannot say who is asking
        db.session.rollback()
        return False
    return True


def person_from_header(header: str) -> Person:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        unauthorized("send the API key as Authorization: Bearer <key>")
    return person_from_key(token.strip())[0]


def person_from_key(secret: str) -> tuple[Person, people.ApiKey | None, str | None]:
    """The person a key belongs to, with the key's row (a person's key) or id (a configured key); 401 for a key
    that is not valid, revoked, or a disabled person's."""
    configured = configured_keys().find(secret)
    if configured is not None:
        return key_admin().person(), None, configured
    key = people.find_key(secret)
    if key is None:
        unauthorized("the API key is not valid")
    return key.user.person(), key, None


def key_admin() -> people.User:
    """The admin CHATAPI_API_KEYS's keys act as; made (and given the chats nobody owns) on first use."""
    user = people.find_user(people.KEY_ADMIN)
    if user is None or not user.admin or user.disabled_at is not None:
        user = people.key_admin()
        db.session.commit()
    return user


def make_key_admin(app: Flask) -> None:
    """At start, the admin CHATAPI_API_KEYS's keys act as, when there are keys and the database is ready (else it
    is made on first use)."""
    if not app.extensions["auth"]:
        return
    with app.app_context():
        try:
            key_admin()
        except SQLAlchemyError:  # not migrated yet (`flask db upgrade` loads the app too), or down
            db.session.rollback()
        finally:
            db.session.remove()


def person_from_cookie(token: str) -> Person:
    found = people.find_session(token)
    if found is None:
        unauthorized("the session is not valid or has ended: sign in again")
    if found.env_key_id is not None and found.env_key_id not in configured_keys().ids:
        unauthorized("the session's key is no longer accepted: sign in again")  # taken out of CHATAPI_API_KEYS
    return found.user.person()


def session_cookie(response: Response, value: str, max_age: int) -> Response:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Secure over HTTPS."""
    response.set_cookie(
        COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=request.is_secure
    )
    return response


def signed_in(response: Response, user: people.User, api_key=None, env_key_id: str | None = None) -> Response:
    """The response with a new session of the person's as its cookie."""
    seconds = current_app.config["CHATAPI_SESSION_SECONDS"]
    token = people.open_session(user, seconds, api_key, env_key_id)
    db.session.commit()
    return session_cookie(response, token, seconds)


def password_matches(stored_hash: str | None, password: str) -> bool:
    """argon2 takes tens of milliseconds of CPU: off the event loop (argon2-cffi lets go of the GIL), so that
    streams go on meanwhile."""
    return gevent.get_hub().threadpool.apply(people.verify_password, (stored_hash, password))


def person_from_password(name: str, password: str) -> people.User:
    """The person with this name and password; the same 401 for a wrong name, a wrong password and a disabled
    person, after the same work (a wrong name is checked against a stand-in hash)."""
    user = people.find_user(name)
    usable = user is not None and user.disabled_at is None
    if not password_matches(user.password_hash if usable else None, password) or not usable:
        unauthorized(WRONG_SIGN_IN)
    return user


@bp.before_request
def require_accounts() -> None:
    """Before the body is read: while accounts are off there is nothing to sign in to."""
    if not accounts_on():
        abort(404, message="this server has no accounts and no API keys: there is nothing to sign in to")


@bp.route("/session", methods=["POST"])
@bp.arguments(SessionSchema)
@bp.response(204, description="Signed in: the session cookie is set.")
@bp.alt_response(401, response="DEFAULT_ERROR", description="The name, password or key is wrong; no cookie is set.")
@bp.alt_response(404, response="DEFAULT_ERROR", description="The server has no accounts and no API keys.")
@bp.doc(security=[])
def open_session(args):
    """Sign in with a name and password, or trade an API key, for a session cookie (server-side, expiring,
    HttpOnly, SameSite=Strict): the browser page's sign-in, since EventSource cannot send an Authorization
    header. Wrong tries are limited per client address and per name (CHATAPI_RATE_LIMIT_AUTH_FAILURES)."""
    response = make_response("", 204)
    if "key" in args:
        person, key, env_key_id = checked(lambda: person_from_key(args["key"]))
        return signed_in(response, db.session.get(people.User, person.id), key, env_key_id)
    name = args["name"].strip().lower()
    user = checked(lambda: person_from_password(name, args["password"]), name)
    return signed_in(response, user)


@bp.route("/session", methods=["DELETE"])
@bp.response(204, description="Signed out: the session is ended and its cookie cleared.")
@bp.alt_response(404, response="DEFAULT_ERROR", description="The server has no accounts and no API keys.")
@bp.doc(security=[])
def close_session():
    """Sign out: the session ends on the server (a copy of its cookie stops working at once) and this browser's
    cookie is cleared."""
    token = request.cookies.get(COOKIE)
    if token:
        people.end_session(token)
        db.session.commit()
    return session_cookie(make_response("", 204), "", 0)

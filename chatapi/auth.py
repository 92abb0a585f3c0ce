"""Who may use the API: API keys (`Authorization: Bearer <key>`) and the page's session cookie (POST /session).
Where a request comes from is chatapi/guard.py's to judge, before this: with the cookie, a request that changes
something must come from this server's own page.

Off until CHATAPI_API_KEYS or CHATAPI_API_KEYS_FILE names a key (config.py reads them). Then every request but
the open ones below must carry a key or a session, and `g.key_id` names the key it came with: a short id that
is no secret, for rate limits and metrics. Without keys `g.key_id` is never set.
"""

import copy
import hashlib
import hmac
from collections.abc import Callable
from typing import NoReturn

from flask import Flask, Response, current_app, g, make_response, request
from flask_smorest import abort
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException, Unauthorized

from . import limits
from .openapi import Blueprint
from .schemas import SessionSchema

COOKIE = "chatapi_session"
# A random key this long cannot be guessed; CHATAPI_RATE_LIMIT_AUTH_FAILURES slows the guessing of a chosen one.
MIN_KEY_CHARS = 16
# Open to anyone who can reach the server: the health check (load balancers and monitors), the page and its
# files (it asks for a key itself), sign-in and sign-out, and the API document with its page (they describe
# the routes, which are no secret, and the docs page needs the document to offer its "Authorize" button).
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
    }
)
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="chatapi"'}
# What the OpenAPI document says about it when keys are on.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (CHATAPI_API_KEYS)"},
    "session": {"type": "apiKey", "in": "cookie", "name": COOKIE, "description": "set by POST /session"},
}

bp = Blueprint("session", __name__, description="Sessions: the browser page's sign-in")


def key_id(key: str) -> str:
    """A key's public name: the first 12 hex digits of its SHA-256 (`printf %s KEY | sha256sum | cut -c1-12`)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def digest(text: str) -> bytes:
    # Lone surrogates can come in JSON bodies; they must not turn a wrong key into a crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Keys:
    """The configured keys, known by their digests and ids; the secret that signs sessions."""

    def __init__(self, keys: tuple[str, ...], secret_key: str | None):
        self.by_digest = {digest(key): key_id(key) for key in keys}
        self.ids = frozenset(self.by_digest.values())
        # Derived from every key when no SECRET_KEY is set: the same in every worker and after a restart, so
        # sessions survive both; forging one takes all the keys; changing the keys ends every session.
        derived = hashlib.sha256(b"chatapi session\0" + b"\0".join(sorted(map(digest, keys)))).hexdigest()
        self.sessions = URLSafeTimedSerializer(secret_key or derived, salt="chatapi-session")

    def __bool__(self) -> bool:
        return bool(self.by_digest)

    def find(self, presented: str) -> str | None:
        """The id of the key presented, or None. Every key is compared, each in constant time."""
        presented = digest(presented)
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
    """Turn authentication on when keys are configured. Call it before any other extension registers a
    request hook (the rate limiter reads g.key_id) and before the Api is set up (the document's security)."""
    check_key_lengths(app.config["CHATAPI_API_KEYS"])
    keys = Keys(app.config["CHATAPI_API_KEYS"], app.config.get("SECRET_KEY"))
    app.extensions["auth"] = keys
    if not keys:
        return
    app.before_request(authenticate)
    # Copied: the settings may come from a class attribute shared by every app.
    options = copy.deepcopy(app.config.get("API_SPEC_OPTIONS") or {})
    options.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    options["security"] = [{name: []} for name in SECURITY_SCHEMES]
    app.config["API_SPEC_OPTIONS"] = options


def configured_keys() -> Keys:
    return current_app.extensions["auth"]


def unauthorized(message: str) -> NoReturn:
    abort(401, message=message, headers=WWW_AUTHENTICATE)


def authenticate() -> None:
    """Before every request: the key it came with (g.key_id), else 401. Nothing has been read or done yet."""
    # A CORS preflight carries no credentials by design, and changes nothing.
    if request.endpoint in OPEN_ENDPOINTS or request.method == "OPTIONS":
        return
    header, cookie = request.headers.get("Authorization"), request.cookies.get(COOKIE)
    if header is None and cookie is None:  # nothing to check, so nothing guessed: not counted
        unauthorized("an API key is required: send Authorization: Bearer <key>, or sign in with POST /session")
    g.key_id = checked(lambda: presented_key(header, cookie))


def checked(check: Callable[[], str]) -> str:
    """The key id a check of credentials finds. Guessing is limited per client address
    (CHATAPI_RATE_LIMIT_AUTH_FAILURES): 429 once it is over, before anything is checked; else the check's 401
    counts against it."""
    limits.refuse_guessing()
    try:
        return check()
    except Unauthorized:
        limits.count_auth_failure()
        raise


def presented_key(header: str | None, cookie: str | None) -> str:
    """The id of the key in the Authorization header, else in the session cookie; 401 when it is not valid."""
    return key_from_header(header) if header is not None else key_from_cookie(cookie)


def may_see_details() -> bool:
    """Whether an open route may say more than a stranger is told (/health: the database's error, the model's path):
    always without keys (whoever reaches the server may use all of it), else with a valid key or session. A wrong
    one counts as anywhere, and over the limit nothing is checked: the route answers for a stranger."""
    if not configured_keys():
        return True
    header, cookie = request.headers.get("Authorization"), request.cookies.get(COOKIE)
    if header is None and cookie is None:
        return False
    try:
        checked(lambda: presented_key(header, cookie))
    except HTTPException:  # 401 or 429
        return False
    return True


def key_from_header(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        unauthorized("send the API key as Authorization: Bearer <key>")
    return key_from_token(token.strip())


def key_from_token(token: str) -> str:
    found = configured_keys().find(token)
    if found is None:
        unauthorized("the API key is not valid")
    return found


def key_from_cookie(token: str) -> str:
    keys = configured_keys()
    try:
        found = keys.sessions.loads(token, max_age=current_app.config["CHATAPI_SESSION_SECONDS"])
    except SignatureExpired:
        unauthorized("the session has expired: sign in again")
    except BadSignature:
        unauthorized("the session is not valid: sign in again")
    if not isinstance(found, str) or found not in keys.ids:  # signed with a SECRET_KEY for a key since taken away
        unauthorized("the session's key is no longer accepted: sign in again")
    return found


def session_cookie(response: Response, value: str, max_age: int) -> Response:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Secure over HTTPS."""
    response.set_cookie(
        COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=request.is_secure
    )
    return response


@bp.before_request
def require_keys() -> None:
    """Before the body is read: without keys there is no session to open or close."""
    if not configured_keys():
        abort(404, message="this server has no API keys: there is nothing to sign in to")


@bp.route("/session", methods=["POST"])
@bp.arguments(SessionSchema)
@bp.response(204, description="Signed in: the session cookie is set.")
@bp.alt_response(401, response="DEFAULT_ERROR", description="The key is not valid; no cookie is set.")
@bp.alt_response(404, response="DEFAULT_ERROR", description="The server has no API keys.")
@bp.doc(security=[])
def open_session(args):
    """Trade an API key for a session cookie (signed, expiring, HttpOnly, SameSite=Strict): the browser page's
    sign-in, since EventSource cannot send an Authorization header."""
    found = checked(lambda: key_from_token(args["key"]))
    keys = configured_keys()
    seconds = current_app.config["CHATAPI_SESSION_SECONDS"]
    return session_cookie(make_response("", 204), keys.sessions.dumps(found), seconds)


@bp.route("/session", methods=["DELETE"])
@bp.response(204, description="Signed out: the session cookie is cleared.")
@bp.alt_response(404, response="DEFAULT_ERROR", description="The server has no API keys.")
@bp.doc(security=[])
def close_session():
    """Sign out: this browser's session cookie is cleared (a copy of it stays valid until it expires)."""
    return session_cookie(make_response("", 204), "", 0)

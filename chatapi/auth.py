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
from typing import NoReturn

from flask import Flask, Response, current_app, g, make_response, request
from flask_smorest import abort
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .blueprint import Blueprint
from .schemas import SessionSchema

COOKIE = "chatapi_session"
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


def init_app(app: Flask) -> None:
    """Turn authentication on when keys are configured. Call it before any other extension registers a
    request hook (the rate limiter reads g.key_id) and before the Api is set up (the document's security)."""
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
    header = request.headers.get("Authorization")
    if header is not None:
        g.key_id = key_from_header(header)
        return  # a browser never adds this header by itself: whoever sent it holds the key
    g.key_id = key_from_cookie()  # from this server's own page if it changes something (chatapi/guard.py)


def key_from_header(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        unauthorized("send the API key as Authorization: Bearer <key>")
    found = configured_keys().find(token.strip())
    if found is None:
        unauthorized("the API key is not valid")
    return found


def key_from_cookie() -> str:
    token = request.cookies.get(COOKIE)
    if token is None:
        unauthorized("an API key is required: send Authorization: Bearer <key>, or sign in with POST /session")
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
    keys = configured_keys()
    found = keys.find(args["key"])
    if found is None:
        unauthorized("the API key is not valid")
    seconds = current_app.config["CHATAPI_SESSION_SECONDS"]
    return session_cookie(make_response("", 204), keys.sessions.dumps(found), seconds)


@bp.route("/session", methods=["DELETE"])
@bp.response(204, description="Signed out: the session cookie is cleared.")
@bp.alt_response(404, response="DEFAULT_ERROR", description="The server has no API keys.")
@bp.doc(security=[])
def close_session():
    """Sign out: this browser's session cookie is cleared (a copy of it stays valid until it expires)."""
    return session_cookie(make_response("", 204), "", 0)

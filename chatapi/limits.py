"""Rate limits with Flask-Limiter, per person (else per client address): every request (CHATAPI_RATE_LIMIT) and,
on top, the requests that start a reply (CHATAPI_RATE_LIMIT_REPLIES); and wrong keys, sessions and passwords per
client address, and wrong passwords per name too (CHATAPI_RATE_LIMIT_AUTH_FAILURES, chatapi/auth.py).

Over a limit, a request gets 429 in the usual error body with `Retry-After` and changes nothing.
`GET /health` (probes poll it) and CORS preflights are never counted; the static files are not either
(Flask-Limiter leaves them out). Joining or resuming a reply that is already being made starts nothing,
so only the general limit counts it: a browser reconnecting to its stream is never refused for replies.
"""

import math
import time
from dataclasses import dataclass
from typing import NoReturn

from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_smorest import abort
from limits import RateLimitItem, parse_many

from .errors import error_response

KEY_PREFIX = "chatapi"
REPLY_SCOPE = "reply-start"
AUTH_FAILURE_SCOPE = "auth-failure"


@dataclass
class RateLimits:
    limiter: Limiter
    replies: list[RateLimitItem]
    auth_failures: list[RateLimitItem]


def client_key() -> str:
    """Whom a request counts against: the person asking (the auth hook, which runs first, sets g.person; all
    of a person's keys and sessions count together), else its client address (behind a trusted proxy, ProxyFix
    has already put the real one there)."""
    person = g.get("person")
    return f"person:{person.id}" if person is not None else request.remote_addr or "unknown"


def limits_from(config, name: str) -> list[RateLimitItem]:
    """The limits a setting names; a bad one stops the server at start with the setting's name."""
    try:
        return parse_many(config[name]) if config[name] else []
    except ValueError as exc:
        raise ValueError(f"{name}={config[name]!r} is not a rate limit such as 600/minute: {exc}") from None


def init_app(app: Flask) -> None:
    """Call it after auth.init_app, whose hook names the person that requests count against."""
    general = limits_from(app.config, "CHATAPI_RATE_LIMIT")
    replies = limits_from(app.config, "CHATAPI_RATE_LIMIT_REPLIES")
    auth_failures = limits_from(app.config, "CHATAPI_RATE_LIMIT_AUTH_FAILURES")
    if not general and not replies and not auth_failures:
        return
    # One limiter (and so one in-memory storage) per app: the tests make several apps in one process.
    limiter = Limiter(
        client_key,
        app=app,
        application_limits=[app.config["CHATAPI_RATE_LIMIT"]] if general else [],
        storage_uri=app.config["CHATAPI_RATE_LIMIT_STORAGE"],
        storage_options=storage_options(app.config),
        key_prefix=KEY_PREFIX,
    )
    limiter.request_filter(never_counted)
    app.extensions["rate_limits"] = RateLimits(limiter, replies, auth_failures)
    app.register_error_handler(RateLimitExceeded, handle_rate_limit_exceeded)


def storage_options(config) -> dict:
    """In Redis the counts go under CHATAPI_REDIS_PREFIX, as every key chatapi writes (several deployments may
    share one Redis): the limits library's own prefix would put them under LIMITS:."""
    scheme = config["CHATAPI_RATE_LIMIT_STORAGE"].partition("://")[0].lower()
    if scheme.startswith(("redis", "valkey")):  # redis, rediss, redis+unix, redis+sentinel, ...
        return {"key_prefix": config["CHATAPI_REDIS_PREFIX"] + "limits"}
    return {}


def never_counted() -> bool:
    return request.method == "OPTIONS" or request.endpoint == "health.health"


def count_reply_start() -> None:
    """Count a request that is about to start a reply against CHATAPI_RATE_LIMIT_REPLIES: 429 when over."""
    rate_limits = current_app.extensions.get("rate_limits")
    if rate_limits is None or not rate_limits.replies:
        return
    strategy, key = rate_limits.limiter.limiter, client_key()
    for item in rate_limits.replies:
        if not strategy.hit(item, KEY_PREFIX, key, REPLY_SCOPE):
            too_many(item, key, REPLY_SCOPE, f"too many replies started: at most {item}")


def guessed(name: str | None) -> list[tuple[str, str]]:
    """What wrong credentials count against: the client's address, and the name a password was tried for."""
    address = request.remote_addr or "unknown"
    return [(address, "from this address"), *([(f"name:{name}", f"for {name}")] if name is not None else [])]


def refuse_guessing(name: str | None = None) -> None:
    """429 while the client's address, or the name a password is tried for, is at CHATAPI_RATE_LIMIT_AUTH_FAILURES:
    before anything is checked, so that the answer says nothing of the credentials."""
    rate_limits = current_app.extensions.get("rate_limits")
    if rate_limits is None:
        return
    strategy = rate_limits.limiter.limiter
    for key, where in guessed(name):
        for item in rate_limits.auth_failures:
            if not strategy.test(item, KEY_PREFIX, key, AUTH_FAILURE_SCOPE):
                message = f"too many wrong keys, sessions or passwords {where}: at most {item}"
                too_many(item, key, AUTH_FAILURE_SCOPE, message)


def count_auth_failure(name: str | None = None) -> None:
    """Count wrong credentials against the client's address and the name (CHATAPI_RATE_LIMIT_AUTH_FAILURES)."""
    rate_limits = current_app.extensions.get("rate_limits")
    if rate_limits is None:
        return
    for key, _ in guessed(name):
        for item in rate_limits.auth_failures:
            rate_limits.limiter.limiter.hit(item, KEY_PREFIX, key, AUTH_FAILURE_SCOPE)


def too_many(item: RateLimitItem, key: str, scope: str, message: str) -> NoReturn:
    """429 with the seconds until the limit's window frees a request."""
    reset_at = current_app.extensions["rate_limits"].limiter.limiter.get_window_stats(item, KEY_PREFIX, key, scope)
    abort(429, message=message, headers={"Retry-After": str(seconds_until(reset_at.reset_time))})


def handle_rate_limit_exceeded(error: RateLimitExceeded):
    """Flask-Limiter's 429 in the usual body, with the seconds until the window frees a request."""
    limit = current_app.extensions["rate_limits"].limiter.current_limit
    retry_after = str(seconds_until(limit.window.reset_time))
    return error_response(
        error, message=f"too many requests: at most {error.limit.limit}", headers={"Retry-After": retry_after}
    )


def seconds_until(epoch: float) -> int:
    return max(1, math.ceil(epoch - time.time()))

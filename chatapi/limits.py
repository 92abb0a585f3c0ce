"""Rate limits with Flask-Limiter, per API key (else per client address): every request
(CHATAPI_RATE_LIMIT) and, on top, the requests that start a reply (CHATAPI_RATE_LIMIT_REPLIES).

Over a limit, a request gets 429 in the usual error body with `Retry-After` and changes nothing.
`GET /health` (probes poll it) and CORS preflights are never counted; the static files are not either
(Flask-Limiter leaves them out). Joining or resuming a reply that is already being made starts nothing,
so only the general limit counts it: a browser reconnecting to its stream is never refused for replies.
"""

import math
import time
from dataclasses import dataclass

from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_smorest import abort
from limits import RateLimitItem, parse_many

from .errors import error_response

KEY_PREFIX = "chatapi"
REPLY_SCOPE = "reply-start"


@dataclass
class RateLimits:
    limiter: Limiter
    replies: list[RateLimitItem]


def client_key() -> str:
    """Whom a request counts against: its API key (the auth hook, which runs first, sets g.key_id), else
    its client address (behind a trusted proxy, ProxyFix has already put the real one there)."""
    return g.get("key_id") or request.remote_addr or "unknown"


def limits_from(config, name: str) -> list[RateLimitItem]:
    """The limits a setting names; a bad one stops the server at start with the setting's name."""
    try:
        return parse_many(config[name]) if config[name] else []
    except ValueError as exc:
        raise ValueError(f"{name}={config[name]!r} is not a rate limit such as 600/minute: {exc}") from None


def init_app(app: Flask) -> None:
    general = limits_from(app.config, "CHATAPI_RATE_LIMIT")
    replies = limits_from(app.config, "CHATAPI_RATE_LIMIT_REPLIES")
    if not general and not replies:
        return
    # One limiter (and so one in-memory storage) per app: the tests make several apps in one process.
    limiter = Limiter(
        client_key,
        app=app,
        application_limits=[app.config["CHATAPI_RATE_LIMIT"]] if general else [],
        storage_uri=app.config["CHATAPI_RATE_LIMIT_STORAGE"],
        key_prefix=KEY_PREFIX,
    )
    limiter.request_filter(never_counted)
    app.extensions["rate_limits"] = RateLimits(limiter, replies)
    app.register_error_handler(RateLimitExceeded, handle_rate_limit_exceeded)


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
            reset_at = strategy.get_window_stats(item, KEY_PREFIX, key, REPLY_SCOPE).reset_time
            abort(
                429,
                message=f"too many replies started: at most {item}",
                headers={"Retry-After": str(seconds_until(reset_at))},
            )


def handle_rate_limit_exceeded(error: RateLimitExceeded):
    """Flask-Limiter's 429 in the usual body, with the seconds until the window frees a request."""
    limit = current_app.extensions["rate_limits"].limiter.current_limit
    retry_after = str(seconds_until(limit.window.reset_time))
    return error_response(
        error, message=f"too many requests: at most {error.limit.limit}", headers={"Retry-After": retry_after}
    )


def seconds_until(epoch: float) -> int:
    return max(1, math.ceil(epoch - time.time()))

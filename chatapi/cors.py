"""CORS with flask-cors: pages on the origins in CHATAPI_CORS_ORIGINS may call the API and read its streams.

Off when the setting is empty: browsers then keep other origins' pages from reading any response.
Credentials are not allowed across origins: such a page sends `Authorization: Bearer <key>` (fetch can,
also for the streams), never the session cookie, so a listed origin cannot act with a visitor's session.
"""

from flask import Flask
from flask_cors import CORS

# Request headers a page may send: the key, a JSON body, and where a stream picks up again.
ALLOWED_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID"]
# Response headers a page may read besides the simple ones.
EXPOSED_HEADERS = ["Location", "Retry-After", "X-Total-Count"]


def origins_from(setting: str) -> list[str]:
    """The origins listed, without blanks or a trailing slash (an origin has no path)."""
    return [origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip()]


def init_app(app: Flask) -> None:
    origins = origins_from(app.config["CHATAPI_CORS_ORIGINS"])
    if not origins:
        return
    CORS(
        app,
        origins=origins,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        supports_credentials=False,
        max_age=600,  # seconds a browser may reuse a preflight's answer
    )

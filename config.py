"""Settings, read from the environment with defaults that serve a single box."""

import os

BASE_DIR = os.path.abspath(os.path.dirname(__file__))


def database_url() -> str:
    """DATABASE_URL, or a SQLite file under instance/; plain postgres URLs get the psycopg 3 driver."""
    url = os.environ.get("DATABASE_URL") or "sqlite:///" + os.path.join(BASE_DIR, "instance", "chatapi.db")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Config:
    SQLALCHEMY_DATABASE_URI = database_url()
    # Bodies above this size get a 413 before they are read.
    MAX_CONTENT_LENGTH = int(os.environ.get("CHATAPI_MAX_BODY_BYTES") or 1024 * 1024)
    CHATAPI_MAX_MESSAGE_CHARS = int(os.environ.get("CHATAPI_MAX_MESSAGE_CHARS") or 65536)

    API_TITLE = "chatapi"
    API_VERSION = "1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "docs"
    # Served by the app itself from the swagger-ui-bundle package: no CDN.
    OPENAPI_SWAGGER_UI_URL = "/docs/assets/"

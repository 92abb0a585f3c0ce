"""The local model: loaded once per process, in its own thread, and shared by every app in it."""

import os

from flask import Flask, current_app

from .replies import ReplyService

SETTINGS = (
    "CHATAPI_MODEL_PATH",
    "CHATAPI_N_CTX",
    "CHATAPI_N_THREADS",
    "CHATAPI_MAX_TOKENS",
    "CHATAPI_QUEUE_SIZE",
    "CHATAPI_KV_CHATS",
    "CHATAPI_PING_SECONDS",
    "CHATAPI_GRACE_SECONDS",
)
_services: dict[tuple, ReplyService] = {}


def init_app(app: Flask) -> None:
    settings = {name: app.config[name] for name in SETTINGS}
    settings["model_cache"] = os.path.join(app.instance_path, "models")
    key = tuple(sorted(settings.items()))
    if key not in _services:
        _services[key] = ReplyService(settings)
    app.extensions["replies"] = _services[key]


def replies() -> ReplyService:
    """The reply service of the current app."""
    return current_app.extensions["replies"]

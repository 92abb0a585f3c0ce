"""chatapi: a self-hosted chat server for a local language model."""

import os

from flask import Blueprint, Flask
from sqlalchemy import event
from swagger_ui_bundle import swagger_ui_path

from . import cors, limits, metrics, replies
from .errors import register_error_handlers
from .extensions import api, db, migrate


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: configuration, extensions, blueprints, error handlers, in that order."""
    app = Flask(__name__)
    app.config.from_object("config.Config")
    if test_config:
        app.config.update(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    return app


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db)
    api.init_app(app)
    replies.init_app(app)
    cors.init_app(app)
    limits.init_app(app)
    metrics.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", set_sqlite_pragmas)


def set_sqlite_pragmas(dbapi_connection, _record) -> None:
    """Foreign keys on (for the cascade), WAL so readers never wait, and wait on locks."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
    # SQLite's own lower() folds ASCII letters only; the chat search must match "École" for "ÉCOLE"
    # as PostgreSQL's lower() does.
    dbapi_connection.create_function("lower", 1, unicode_lower, deterministic=True)


def unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def register_blueprints(app: Flask) -> None:
    from . import chats, conversations, health, pages

    for module in (chats, conversations, health, metrics):
        api.register_blueprint(module.bp)
    app.register_blueprint(pages.bp)  # the browser page, outside the API document
    # The docs page's scripts and styles, from the swagger-ui-bundle package (works offline).
    app.register_blueprint(
        Blueprint("docs_assets", __name__, static_folder=swagger_ui_path, static_url_path="/docs/assets")
    )

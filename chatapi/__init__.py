"""chatapi: a self-hosted chat server for a local language model."""

import os

from flask import Blueprint, Flask
from sqlalchemy import event
from swagger_ui_bundle import swagger_ui_path
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, cli, cors, guard, limits, metrics, people, replies  # noqa: F401 (people: its tables)
from .disk import DiskWatch
from .errors import register_error_handlers
from .extensions import api, db, migrate


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: configuration, extensions, blueprints, error handlers, in that order."""
    app = Flask(__name__)
    app.config.from_object("config.Config")
    if test_config:
        app.config.update(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    trust_proxy(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    cli.init_app(app)  # flask users ..., flask keys ...
    return app


def trust_proxy(app: Flask) -> None:
    """Behind a reverse proxy (CHATAPI_TRUST_PROXY=1), the client's address, the scheme (https: Secure
    cookies) and the host as the proxy received them. Never otherwise: any client could claim them."""
    if app.config["CHATAPI_TRUST_PROXY"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)


def register_extensions(app: Flask) -> None:
    guard.init_app(app)  # first: a foreign Host, or a cross-site request that acts, is refused before anything runs
    auth.init_app(app)  # next: its request hook decides who is asking before any other hook runs
    # Before the API: a bad limit or search backend stops the app before the one API object is set up for it
    # (half set up, the process's other apps would serve an empty document).
    limits.init_app(app)
    replies.init_app(app)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config["SQLALCHEMY_DATABASE_URI"]))
    db.init_app(app)
    migrate.init_app(app, db)
    api.init_app(app)
    cors.init_app(app)
    metrics.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", set_sqlite_pragmas)
        app.extensions["disk"] = DiskWatch(db.engine)


def engine_options(url: str) -> dict:
    """PostgreSQL may restart under the app: pool_pre_ping replaces a connection it dropped before a request
    uses it, so a restart costs no request; connect_timeout turns a server that does not answer into a 503
    within seconds rather than a hung request. A SQLite file needs neither."""
    if not url.startswith("postgresql"):
        return {}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}


def set_sqlite_pragmas(dbapi_connection, _record) -> None:
    """Foreign keys on (for the cascade), WAL so readers never wait, and wait on locks.

    synchronous=NORMAL: in WAL mode a commit is then durable across a crash of the server (SIGKILL; see
    tests/test_crash.py) and the file never corrupt, and only a power cut may undo the last commits; FULL would
    fsync every commit, some 7 ms here during which the one gevent worker serves nobody.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
    # SQLite's own lower() folds ASCII letters only; the chat search must match "École" for "ÉCOLE"
    # as PostgreSQL's lower() does.
    dbapi_connection.create_function("lower", 1, unicode_lower, deterministic=True)


def unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def register_blueprints(app: Flask) -> None:
    from . import accounts, chats, conversations, health, model_api, openai_api, pages, search, shares, usage

    routes = (
        chats.bp,
        shares.bp,
        conversations.bp,
        health.bp,
        auth.bp,
        accounts.me,
        accounts.users,
        usage.bp,
        model_api.bp,
        metrics.bp,
        search.bp,
    )
    for blueprint in routes:
        api.register_blueprint(blueprint)
    app.register_blueprint(pages.bp)  # the browser page, outside the API document
    app.register_blueprint(openai_api.bp)  # OpenAI's API, in its own shape: outside the API document
    # The docs page's scripts and styles, from the swagger-ui-bundle package (works offline).
    app.register_blueprint(
        Blueprint("docs_assets", __name__, static_folder=swagger_ui_path, static_url_path="/docs/assets")
    )

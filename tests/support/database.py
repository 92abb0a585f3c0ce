"""The tests' databases: an empty one brought to head by the migrations, and the app the in-process tests run on
it. Shared by tests/conftest.py, tests/page/conftest.py (SQLite only) and tests/test_migrations.py."""

import flask_migrate
import sqlalchemy as sa

from chatapi import create_app, search_index
from chatapi.extensions import db


def sqlite_url(tmp_path_factory) -> str:
    """A new SQLite database in a directory of the run's own."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/chatapi.db"


def app_on(database_url: str):
    """The app on the database, its schema reset, for a session-scoped fixture to yield from."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        reset_schema()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def drop_everything() -> None:
    """Drop the models' tables and alembic's, leaving an empty database."""
    db.session.remove()
    with db.engine.begin() as conn:
        search_index.drop(conn)  # the FTS5 tables are not the models': drop_all leaves them
    db.drop_all()
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


def reset_schema() -> None:
    """An empty database brought to head by the migrations: the schema production runs on."""
    drop_everything()
    flask_migrate.upgrade()

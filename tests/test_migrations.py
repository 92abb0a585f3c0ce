"""The migrations build exactly the schema the models describe, on both databases."""

import flask_migrate
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from chatapi.extensions import db
from conftest import reset_schema


def schema_differences() -> list:
    with db.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)


def test_upgrade_on_an_empty_database_matches_the_models(app):
    with app.app_context():
        db.drop_all()
        try:
            flask_migrate.upgrade()
            assert schema_differences() == []
            flask_migrate.downgrade(revision="base")
            assert sorted(db.inspect(db.engine).get_table_names()) == ["alembic_version"]
            flask_migrate.upgrade()
            assert schema_differences() == []
        finally:
            reset_schema()


def test_the_comparison_notices_a_missing_index(app):
    """Guards the test above: a schema that differs must be reported."""
    with app.app_context():
        try:
            with db.engine.begin() as conn:
                conn.execute(db.text("DROP INDEX ix_chats_updated_at_id"))
            assert any("ix_chats_updated_at_id" in str(diff) for diff in schema_differences())
        finally:
            reset_schema()

"""Listing stays cheap with many chats: a fixed number of queries, served by the index."""

import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from chatapi.extensions import db
from chatapi.models import Chat

MANY = 20_000


@pytest.fixture
def many_chats(app, client):
    start = datetime(2024, 1, 1)
    rows = [
        {
            "id": uuid.uuid4(),
            "name": f"chat {i}",
            "created_at": start + timedelta(seconds=i),
            "updated_at": start + timedelta(seconds=i),
        }
        for i in range(MANY)
    ]
    with app.app_context():
        db.session.execute(sa.insert(Chat), rows)
        db.session.commit()
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return rows


@pytest.fixture
def statements(app):
    """The SQL statements the app runs while the test body runs."""
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", record)


def test_a_page_takes_two_queries_whatever_the_size(client, many_chats, statements):
    response = client.get("/chats/?limit=50&offset=100")
    assert response.status_code == 200
    assert len(response.json) == 50
    assert response.json[0]["name"] == f"chat {MANY - 101}"
    assert response.headers["X-Total-Count"] == str(MANY)
    # The count and the page: no query per chat; and, on a box without accounts, whether anyone exists yet.
    assert len([sql for sql, _ in statements if "FROM users" not in sql]) == 2
    assert len(statements) == 3


def test_the_page_query_reads_the_index(app, client, backend, many_chats, statements):
    client.get("/chats/?limit=50")
    page_sql, parameters = next((s, p) for s, p in statements if "ORDER BY" in s)
    explain = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
    with app.app_context(), db.engine.connect() as conn:
        plan = "\n".join(str(row) for row in conn.exec_driver_sql(explain + page_sql, parameters))
    assert "ix_chats_updated_at_id" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan  # no sort of the whole table

"""The migrations build exactly the schema the models describe, on both databases, and keep the rows."""

import re
import uuid
from datetime import datetime, timedelta

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from chatapi import create_app, people, search_index
from chatapi.extensions import db
from chatapi.models import ROLES, Chat, Conversation
from tests.support.database import drop_everything, reset_schema


def check_sql(sql: str) -> str:
    """A CHECK condition in one form for both databases: PostgreSQL gives `role IN ('Human', 'Assistant')`
    back as `(role)::text = ANY ((ARRAY['Human'::character varying, 'Assistant'::character varying])::text[])`."""
    sql = re.sub(r"::[\w ]+(\[\])?", "", sql)  # casts
    sql = re.sub(r"= ANY \(*ARRAY\[(.*?)\]", r"IN (\1", sql)
    return re.sub(r"[\s()]", "", sql)


def check_differences(conn) -> list:
    """What alembic's comparison leaves out: each table's CHECK constraints, by name and condition."""
    inspector = sa.inspect(conn)
    differences = []
    for table in db.metadata.sorted_tables:
        models = {c.name: check_sql(str(c.sqltext)) for c in table.constraints if isinstance(c, sa.CheckConstraint)}
        database = {c["name"]: check_sql(c["sqltext"]) for c in inspector.get_check_constraints(table.name)}
        if database != models:
            differences.append(("check_constraints", table.name, {"database": database, "models": models}))
    return differences


def schema_differences() -> list:
    with db.engine.connect() as conn:
        # The search index is the migration's alone (chatapi/search_index.py), as `flask db migrate` leaves it out.
        opts = {"compare_type": True, "include_object": search_index.include_object}
        context = MigrationContext.configure(conn, opts=opts)
        return compare_metadata(context, db.metadata) + check_differences(conn)


def test_upgrade_on_an_empty_database_matches_the_models(app):
    with app.app_context():
        try:
            drop_everything()
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


@pytest.mark.parametrize("role_check", [None, "role IN ('Human', 'System')"])
def test_the_comparison_notices_a_missing_or_changed_check(app, role_check):
    """Guards the comparison of CHECK constraints, which alembic's own leaves out."""
    schema = sa.MetaData(naming_convention=db.metadata.naming_convention)  # the constraints' names the models give
    for table in db.metadata.sorted_tables:
        table.to_metadata(schema)
    conversations = schema.tables["conversations"]
    conversations.constraints -= {c for c in conversations.constraints if isinstance(c, sa.CheckConstraint)}
    if role_check:
        conversations.append_constraint(sa.CheckConstraint(role_check, name="ck_conversations_role"))
    with app.app_context():
        try:
            drop_everything()
            schema.create_all(db.engine)
            assert [diff[:2] for diff in schema_differences()] == [("check_constraints", "conversations")]
        finally:
            reset_schema()


def test_upgrade_keeps_every_row_of_a_0001_database(app):
    with app.app_context():
        try:
            drop_everything()
            flask_migrate.upgrade(revision="0001")
            chat_rows, conversation_rows = populate(system_prompts=False)
            flask_migrate.upgrade()
            assert schema_differences() == []
            check_kept(chat_rows, conversation_rows)
            kept = db.session.scalars(sa.select(Conversation)).all()
            assert [(c.sources, c.citations) for c in kept] == [(None, None)] * len(conversation_rows)
            assert db.session.scalars(sa.select(Chat.system_prompt)).all() == [None] * len(chat_rows)  # the server's
        finally:
            reset_schema()


def test_downgrade_from_0004_keeps_the_chats_without_their_system_prompts(app):
    with app.app_context():
        try:
            chat = Chat(name="prompted", system_prompt="Be brief.")
            db.session.add(chat)
            db.session.commit()
            flask_migrate.downgrade(revision="0003")
            columns = {column["name"] for column in sa.inspect(db.engine).get_columns("chats")}
            assert "system_prompt" not in columns
            with db.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT name FROM chats")).scalars().all() == ["prompted"]
            flask_migrate.upgrade()
            assert schema_differences() == []
            assert db.session.scalars(sa.select(Chat.system_prompt)).all() == [None]
        finally:
            reset_schema()


def test_the_tests_run_on_the_migrated_schema(app):
    """conftest builds every test's schema with the migrations, as production does, not with create_all."""
    with app.app_context(), db.engine.connect() as conn:
        head = ScriptDirectory(app.extensions["migrate"].directory).get_current_head()
        assert MigrationContext.configure(conn).get_current_revision() == head
        assert schema_differences() == []


PASSWORD = "correct horse battery staple"
ENV_KEY = "env-key-" + uuid.uuid4().hex


def populate(system_prompts: bool = True) -> tuple[list[dict], list[dict]]:
    """Chats and messages written straight into a database at an old revision (before 0004: no system prompts), as
    a server of then left them: the rows, to compare with what an upgrade keeps."""
    chats = sa.table(
        "chats",
        sa.column("id", sa.Uuid),
        sa.column("name", sa.String),
        *([sa.column("system_prompt", sa.Text)] if system_prompts else []),
        sa.column("created_at", sa.DateTime),
        sa.column("updated_at", sa.DateTime),
    )
    conversations = sa.table(
        "conversations",
        sa.column("id", sa.Uuid),
        sa.column("chat_id", sa.Uuid),
        sa.column("role", sa.String),
        sa.column("message", sa.Text),
        sa.column("created_at", sa.DateTime),
        sa.column("updated_at", sa.DateTime),
    )
    start = datetime(2024, 2, 29, 23, 59, 59, 999000)
    chat_rows = [
        {
            "id": uuid.uuid4(),
            "name": f"chat {i}",
            **({"system_prompt": "Be brief." if i == 1 else None} if system_prompts else {}),
            "created_at": start,
            "updated_at": start + timedelta(minutes=i),
        }
        for i in range(3)
    ]
    conversation_rows = [
        {
            "id": uuid.uuid4(),
            "chat_id": chat["id"],
            "role": role,
            "message": f"{role} {n} in {chat['name']}: ünïcode 🙂",
            "created_at": chat["updated_at"] + timedelta(seconds=n),
            "updated_at": chat["updated_at"] + timedelta(seconds=n),
        }
        for chat in chat_rows
        for n, role in enumerate(ROLES * 2)
    ]
    with db.engine.begin() as conn:
        conn.execute(chats.insert(), chat_rows)
        conn.execute(conversations.insert(), conversation_rows)
    return chat_rows, conversation_rows


def check_kept(chat_rows: list[dict], conversation_rows: list[dict]) -> None:
    """Every chat and message of before, with the same ids and contents."""
    db.session.remove()
    kept_chats = db.session.scalars(sa.select(Chat)).all()
    columns = tuple(chat_rows[0])
    assert sorted(tuple(getattr(c, name) for name in columns) for c in kept_chats) == sorted(
        tuple(row.values()) for row in chat_rows
    )
    kept = db.session.scalars(sa.select(Conversation)).all()
    columns = ("id", "chat_id", "role", "message", "created_at", "updated_at")
    assert sorted(tuple(getattr(c, name) for name in columns) for c in kept) == sorted(
        tuple(row.values()) for row in conversation_rows
    )
    db.session.remove()


def owners() -> list:
    db.session.remove()
    found = db.session.scalars(sa.select(Chat.owner_id)).all()
    db.session.remove()
    return found


@pytest.mark.parametrize("first_admin", ["users create --admin", "CHATAPI_API_KEYS"])
def test_upgrading_a_populated_0004_database_loses_nothing_and_the_first_admin_gets_the_chats(
    app, client, database_url, first_admin
):
    with app.app_context():
        try:
            drop_everything()
            flask_migrate.upgrade(revision="0004")
            chat_rows, conversation_rows = populate()
            flask_migrate.upgrade()
            assert schema_differences() == []
            check_kept(chat_rows, conversation_rows)
            assert owners() == [None] * len(chat_rows)

            # Accounts off (nobody yet): every chat and message reachable as before.
            listed = client.get("/chats/")
            assert listed.headers["X-Total-Count"] == str(len(chat_rows))
            assert sorted(c["id"] for c in listed.json) == sorted(str(row["id"]) for row in chat_rows)
            for row in chat_rows:
                history = client.get(f"/chats/{row['id']}/conversations").json
                assert len(history) == len(ROLES) * 2
            assert client.get(f"/conversations/{conversation_rows[0]['id']}").status_code == 200

            # A person who is no admin, made first: the chats are not theirs.
            bob = people.create_user("bob", PASSWORD)
            _, bob_key = people.new_key(bob, "tests")
            db.session.commit()
            as_bob = {"Authorization": f"Bearer {bob_key}"}
            assert client.get("/chats/", headers=as_bob).json == []
            assert client.get(f"/chats/{chat_rows[0]['id']}", headers=as_bob).status_code == 404
            assert owners() == [None] * len(chat_rows)

            if first_admin == "CHATAPI_API_KEYS":
                config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}
                keyed = create_app({**config, "CHATAPI_API_KEYS": (ENV_KEY,)})
                create_app(config)  # every app shares one API document, the last app's: the open server's
                as_admin, admin_client = {"Authorization": f"Bearer {ENV_KEY}"}, keyed.test_client()
                me = admin_client.get("/me", headers=as_admin).json
                assert me["name"] == "admin" and me["admin"] is True
                admin_id = me["id"]
            else:
                admin = people.create_user("root", PASSWORD, admin=True)
                _, admin_key = people.new_key(admin, "tests")
                db.session.commit()
                as_admin, admin_client, admin_id = {"Authorization": f"Bearer {admin_key}"}, client, admin.id
            assert owners() == [admin_id] * len(chat_rows)
            check_kept(chat_rows, conversation_rows)
            listed = admin_client.get("/chats/", headers=as_admin)
            assert sorted(c["id"] for c in listed.json) == sorted(str(row["id"]) for row in chat_rows)
            assert client.get("/chats/", headers=as_bob).json == []
            # A second admin gets nothing of the first's.
            people.create_user("second", PASSWORD, admin=True)
            db.session.commit()
            assert owners() == [admin_id] * len(chat_rows)
        finally:
            reset_schema()


def test_downgrade_from_head_to_0004_keeps_the_chats_without_their_owners(app):
    with app.app_context():
        try:
            admin = people.create_user("root", PASSWORD, admin=True)
            db.session.flush()
            chat = Chat(name="owned")
            chat.owner_id = admin.id
            db.session.add(chat)
            db.session.add(Conversation(chat=chat, role="Human", message="hello"))
            db.session.commit()
            chat_id = chat.id
            db.session.remove()
            flask_migrate.downgrade(revision="0004")
            tables = set(sa.inspect(db.engine).get_table_names())
            assert not tables & {"users", "api_keys", "sessions", "usage"}
            assert "owner_id" not in {column["name"] for column in sa.inspect(db.engine).get_columns("chats")}
            with db.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT name FROM chats")).scalars().all() == ["owned"]
                assert conn.execute(sa.text("SELECT count(*) FROM conversations")).scalar() == 1
            flask_migrate.upgrade()
            assert schema_differences() == []
            assert owners() == [None]
            assert db.session.get(Chat, chat_id).name == "owned"
        finally:
            reset_schema()

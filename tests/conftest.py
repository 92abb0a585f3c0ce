"""Fixtures: every test that uses `app` or `client` runs once on SQLite and once on PostgreSQL."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests
import sqlalchemy as sa

from chatapi import create_app
from chatapi.extensions import db

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("CHATAPI_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_TEST_DB = "chatapi_test"
postgres_skipped: list[str] = []


def postgres_url() -> str:
    """A URL for a database of our own on the local PostgreSQL, created when missing."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_TEST_DB,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{POSTGRES_TEST_DB}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{POSTGRES_TEST_DB}"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/chatapi.db"
    try:
        return postgres_url()
    except psycopg.OperationalError as exc:
        if os.environ.get("CHATAPI_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here but unreachable: {exc}")
        postgres_skipped.append(str(exc).strip())
        pytest.skip("PostgreSQL unreachable at 127.0.0.1:5432")


@pytest.fixture(scope="session")
def app(database_url):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        reset_schema()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def reset_schema() -> None:
    """Drop everything (alembic's table too) and create the models' tables."""
    db.session.remove()
    db.drop_all()
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    db.create_all()


@pytest.fixture
def client(app):
    yield app.test_client()
    with app.app_context():
        db.session.remove()
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()


@pytest.fixture
def backend(database_url) -> str:
    return database_url.split(":", 1)[0].split("+")[0]


def pytest_terminal_summary(terminalreporter):
    if postgres_skipped:
        terminalreporter.write_sep("!", "PostgreSQL WAS NOT TESTED", red=True, bold=True)
        terminalreporter.write_line(f"every PostgreSQL test was skipped: {postgres_skipped[0]}", red=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(app, database_url, tmp_path):
    """The real server, as `make run` starts it (gunicorn, one gevent worker), on a free port."""
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w+")
    env = dict(os.environ, DATABASE_URL=database_url)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gevent",
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        "wsgi:app",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # bound but the worker still booting
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"gunicorn did not start:\n{log.read()}")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

"""Fixtures: every test that uses `app` or `client` runs once on SQLite and once on PostgreSQL."""

import os
import shutil
import subprocess
import tempfile
import uuid

import psycopg
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from chatapi.extensions import db
from chatapi.people import User
from chatapi.web import research
from tests.support import wait_for
from tests.support.database import app_on, sqlite_url
from tests.support.factweb import FactWeb
from tests.support.scratch import create_database, drop_database
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.web import Web

# Pulled models and their catalog go to a folder of this run's own, set before an app reads its config (create_app);
# every server the tests start inherits it. The bundled model stays assembled in instance/models.
os.environ["CHATAPI_MODELS_DIR"] = MODELS_DIR = tempfile.mkdtemp(prefix="chatapi-test-models-")
# No test pulls from the real Hugging Face (the fuzzer's valid POST /models included): nothing listens on port 9.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
# Chats' saved KV-cache states too (each server a folder of its own where a test looks at them).
os.environ["CHATAPI_KV_DIR"] = KV_DIR = tempfile.mkdtemp(prefix="chatapi-test-kv-")

# A database of this run's own, so that two runs at once never drop each other's schema.
POSTGRES_TEST_DB = f"chatapi_test_{uuid.uuid4().hex[:12]}"
postgres_skipped: list[str] = []


def postgres_opted_out() -> bool:
    """Only CHATAPI_SKIP_POSTGRES=1 lets an unreachable PostgreSQL pass as a skip; otherwise it fails."""
    return os.environ.get("CHATAPI_SKIP_POSTGRES") == "1"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path_factory)
        return
    try:
        url = create_database(POSTGRES_TEST_DB)
    except psycopg.OperationalError as exc:
        if not postgres_opted_out():
            pytest.fail(f"PostgreSQL is unreachable (set CHATAPI_SKIP_POSTGRES=1 to test SQLite only): {exc}")
        postgres_skipped.append(str(exc).strip())
        pytest.skip("PostgreSQL unreachable at 127.0.0.1:5432 and CHATAPI_SKIP_POSTGRES=1")
    yield url
    drop_database(POSTGRES_TEST_DB)


@pytest.fixture(scope="session")
def app(database_url):
    yield from app_on(database_url)


@pytest.fixture(autouse=True)
def clear_web_caches():
    """Internet mode caches searches and pages in the process: no test may see another test's."""
    research.clear_caches()


@pytest.fixture(autouse=True)
def no_person_left_behind(request):
    """A person turns accounts on for the whole database (a keyed app makes its admin on first use): whoever a test
    made goes after it, with their chats, so that the next test finds the box it expects, open unless it says."""
    yield
    if "app" not in request.fixturenames:
        return
    app = request.getfixturevalue("app")
    with app.app_context():
        try:
            db.session.remove()
            db.session.execute(sa.delete(User))
            db.session.commit()
        except SQLAlchemyError:  # a test that took the schema or the database away puts it back itself
            db.session.rollback()
        finally:
            db.session.remove()


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


# Modules whose tests see the database only through the API, whose own tests run on both, or not at all (the
# OpenAI-compatible API stores nothing by default): SQLite is enough. The page tests (tests/page/) have a SQLite-only
# database_url of their own.
SQLITE_ONLY = (
    "test_openai.py",
    "test_remote_backend.py",
    "test_kv_disk.py",
    "test_openai_tools.py",
    "test_openai_structured.py",
    "test_openai_completions.py",
    "test_openai_embeddings.py",
)


# Modules about several processes sharing a database, as several hosts would: PostgreSQL is what they share.
POSTGRESQL_ONLY = ("test_redis.py", "test_deployment.py")


def pytest_collection_modifyitems(config, items):
    """Leave out the PostgreSQL runs of the SQLite-only modules and the SQLite runs of the PostgreSQL-only ones
    (reported as deselected)."""
    def database(item) -> str | None:
        callspec = getattr(item, "callspec", None)
        return callspec.params.get("database_url") if callspec else None

    dropped = [
        item
        for item in items
        if (item.path.name in SQLITE_ONLY and database(item) == "postgresql")
        or (item.path.name in POSTGRESQL_ONLY and database(item) == "sqlite")
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def pytest_terminal_summary(terminalreporter):
    if postgres_skipped:
        terminalreporter.write_sep("!", "PostgreSQL WAS NOT TESTED", red=True, bold=True)
        terminalreporter.write_line(f"every PostgreSQL test was skipped: {postgres_skipped[0]}", red=True)


@pytest.fixture
def start_server(app, database_url, tmp_path):
    """Starts servers with the given settings; all are stopped after the test."""
    servers = []

    def start(ready_status: int = 200, **settings: str) -> Server:
        server = Server(database_url, tmp_path / f"gunicorn-{len(servers)}.log", **settings)
        servers.append(server)
        return server.wait_until_up(ready_status)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(start_server) -> str:
    return start_server(**FAST_STREAM_SETTINGS).url


@pytest.fixture(scope="module")
def inference_server(app, database_url, tmp_path_factory):
    """One real server with the real model for a whole test module."""
    server = Server(database_url, tmp_path_factory.mktemp("server") / "gunicorn.log", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(scope="module")
def one_at_a_time_server(app, database_url, tmp_path_factory):
    """A server that generates one reply at a time (CHATAPI_PARALLEL=1), for the tests of its queue."""
    log = tmp_path_factory.mktemp("server") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_PARALLEL="1", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


# Servers shared by the tests of a module; each test leaves them idle for the next.
SHARED_SERVERS = ("inference_server", "one_at_a_time_server")
IDLE = {"running": 0, "waiting": 0}


@pytest.fixture(autouse=True)
def shared_servers_left_idle(request):
    """After each test on a shared server, stop whatever it left running (a failed test may leave a long
    reply behind) and wait until the model is idle, so that the next test starts on an empty queue."""
    servers = [request.getfixturevalue(name) for name in SHARED_SERVERS if name in request.fixturenames]
    if servers:
        request.getfixturevalue("client")  # set up first, so that its teardown (emptying the tables) comes after
    yield
    for base in servers:
        leave_idle(base)


def leave_idle(base: str) -> None:
    for chat in requests.get(f"{base}/chats/", timeout=10).json():
        requests.post(f"{base}/conversations/stop/{chat['id']}", timeout=10)

    def idle() -> bool:
        return requests.get(f"{base}/health", timeout=10).json()["model"]["replies"] == IDLE

    wait_for(idle, 120, "an idle model")


@pytest.fixture(scope="session")
def web():
    """A small web on 127.0.0.1: search backends and article pages (tests/support/web.py)."""
    server = Web("127.0.0.1")
    yield server
    server.close()


@pytest.fixture(scope="session")
def factweb():
    """A made-up web of invented facts, distractors and an injection page on 127.0.0.1 (tests/support/factweb.py)."""
    server = FactWeb("127.0.0.1")
    yield server
    server.close()


@pytest.fixture(scope="session")
def elsewhere():
    """The same web on another loopback address, never in the allow list: nothing may reach it."""
    server = Web("127.0.0.2")
    yield server
    server.close()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(MODELS_DIR, ignore_errors=True)
    shutil.rmtree(KV_DIR, ignore_errors=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB filesystem of the test's own (mounting one needs root), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (it needs root): {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)

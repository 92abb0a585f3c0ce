"""PostgreSQL stopped and started under the running server, on a cluster of the test's own (never the shared
one): while it is down every route that needs it answers 503 JSON at once, a reply that ends meanwhile ends its
stream with an error event, and when it is back the same server serves again, without a restart."""

import time

import flask_migrate
import pytest
import requests

from chatapi import create_app
from chatapi.extensions import db
from tests.support import wait_for
from tests.support.chats import ENDLESS, QUESTION, history, infer, new_chat
from tests.support.postgres import Cluster
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.sse import EventStream, read_events

# Every API route that reads or writes the database, with a body where it takes one.
ROUTES = [
    ("GET", "/chats/", None),
    ("GET", "/chats/{chat}", None),
    ("POST", "/chats/create", {"name": "while down"}),
    ("PUT", "/chats/update/{chat}", {"name": "while down"}),
    ("DELETE", "/chats/delete/{chat}", None),
    ("GET", "/chats/{chat}/conversations", None),
    ("GET", "/conversations/?chat_id={chat}", None),
    ("GET", "/conversations/{message}", None),
    ("POST", "/conversations/create", {"chat_id": "{chat}", "role": "Human", "message": "while down"}),
    ("PUT", "/conversations/update/{message}", {"message": "while down"}),
    ("DELETE", "/conversations/delete/{message}", None),
    ("GET", "/conversations/inference/{chat}", None),
    ("GET", "/conversations/inference_internet/{chat}", None),
    ("POST", "/conversations/stop/{chat}", None),
]


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster()
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": cluster.url})
    with app.app_context():
        flask_migrate.upgrade()
        db.engine.dispose()
    yield cluster
    cluster.close()


@pytest.fixture
def server(cluster, tmp_path):
    server = Server(cluster.url, tmp_path / "gunicorn.log", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up()
    server.stop()


def assert_unavailable(response: requests.Response) -> None:
    """The usual error body, as a 503 to retry."""
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"code": 503, "status": "Service Unavailable", "message": "the database is unavailable"}
    assert response.headers["Retry-After"].isdigit()


def call(base: str, method: str, path: str, body: dict | None, ids: dict) -> requests.Response:
    if body:
        body = {name: value.format(**ids) for name, value in body.items()}
    return requests.request(method, base + path.format(**ids), json=body, timeout=10)


def test_a_restart_while_idle_costs_no_request(cluster, server):
    """The pool's connections die with the restart; each is replaced before a request would use it."""
    base = server.url
    chat_id = new_chat(base, QUESTION)
    for _ in range(5):
        assert requests.get(f"{base}/chats/", timeout=10).status_code == 200
    cluster.stop()
    cluster.start()
    for _ in range(5):
        response = requests.get(f"{base}/chats/{chat_id}", timeout=10)
        assert response.status_code == 200, response.text


def test_stopped_under_a_running_reply_gives_503_then_recovers(cluster, server):
    base = server.url
    chat_id = new_chat(base, *ENDLESS)
    ids = {"chat": chat_id, "message": history(base, chat_id)[0]["id"]}
    # A reply long enough to be running still when the database stops, right after its first token.
    stream = EventStream(infer(base, chat_id, "max_tokens=64&temperature=0"))
    events = iter(stream)
    seen = [next(events) for _ in range(2)]
    assert seen[0]["event"] == "start" and seen[-1]["event"] == "message"

    cluster.stop()
    for method, path, body in ROUTES:
        started = time.monotonic()
        response = call(base, method, path, body, ids)
        assert time.monotonic() - started < 5, f"{method} {path} took too long"
        assert_unavailable(response)
    health = requests.get(f"{base}/health", timeout=10)
    assert health.status_code == 503 and health.headers["Retry-After"].isdigit()
    assert health.json()["status"] == "unavailable" and health.json()["database"] == "error"
    assert "connect" in health.json()["reason"].lower()
    # Pages that need no database are still served.
    assert requests.get(f"{base}/openapi.json", timeout=10).status_code == 200

    # The reply ran to its end meanwhile and could not be saved: its stream says so and ends.
    rest = list(events)
    assert [e["event"] for e in rest[:-1]] == ["message"] * (len(rest) - 1)
    assert rest[-1]["event"] == "error"
    assert rest[-1]["data"]["code"] == 503 and "not saved" in rest[-1]["data"]["message"]

    cluster.start()
    wait_for(lambda: requests.get(f"{base}/health", timeout=10).status_code == 200, 30, "the server to recover")
    assert server.process.poll() is None  # the same server, never restarted
    # Nothing was changed while it was down, and the chat answers again.
    assert [m["role"] for m in history(base, chat_id)] == ["Human", "Assistant", "Human"]
    events = read_events(infer(base, chat_id, "max_tokens=16&temperature=0"))
    assert events[-1]["event"] == "done"
    assert history(base, chat_id)[-1] == events[-1]["data"]["message"]
    assert requests.post(f"{base}/chats/create", json={"name": "after"}, timeout=10).status_code == 201

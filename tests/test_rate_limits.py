"""Rate limits (CHATAPI_RATE_LIMIT, CHATAPI_RATE_LIMIT_REPLIES): the real server, and the key function in-process."""

import random
import uuid

import pytest
import redis
import requests
from flask import g

from chatapi import create_app, people
from chatapi.extensions import db
from chatapi.limits import client_key
from tests.support.chats import ENDLESS, GREEDY, QUESTION, history, infer, new_chat
from tests.support.client import snapshot
from tests.support.scratch import REDIS_URL, forget_keys
from tests.support.server import FAST_STREAM_SETTINGS
from tests.support.sse import EventStream, read_events

ORIGIN = "https://app.example"


def assert_too_many(response: requests.Response, window_seconds: int = 60) -> None:
    """A 429 in the usual error body, with the seconds to wait."""
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == 429 and body["status"] == "Too Many Requests" and "at most" in body["message"]
    assert 0 < int(response.headers["Retry-After"]) <= window_seconds


def test_the_request_over_the_limit_gets_429_and_changes_nothing(start_server, app, client):
    base = start_server(CHATAPI_RATE_LIMIT="4/minute", CHATAPI_CORS_ORIGINS=ORIGIN).url
    assert requests.post(f"{base}/chats/create", json={"name": "one"}, timeout=10).status_code == 201
    for _ in range(3):
        assert requests.get(f"{base}/chats/", timeout=10).status_code == 200
    before = snapshot(app)
    over = requests.post(f"{base}/chats/create", json={"name": "two"}, headers={"Origin": ORIGIN}, timeout=10)
    assert_too_many(over)
    assert snapshot(app) == before
    # A page on an allowed origin can read the 429 and when to come back.
    assert over.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Retry-After" in over.headers["Access-Control-Expose-Headers"]
    assert_too_many(requests.get(f"{base}/chats/", timeout=10))
    assert_too_many(requests.get(f"{base}/metrics", timeout=10))
    # Never counted: the health probe and CORS preflights.
    for _ in range(10):
        assert requests.get(f"{base}/health", timeout=10).status_code == 200
    preflight = requests.options(
        f"{base}/chats/create", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}, timeout=10
    )
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_the_reply_limit_counts_only_requests_that_start_a_reply(start_server, client):
    base = start_server(CHATAPI_RATE_LIMIT_REPLIES="2/minute", **FAST_STREAM_SETTINGS).url
    # One reply started (1 of 2), joined by a second request and resumed after its end: neither starts one.
    endless = new_chat(base, *ENDLESS)
    url = infer(base, endless, f"max_tokens=400&{GREEDY}")
    first = iter(EventStream(url))
    head = [next(first) for _ in range(3)]
    joined = EventStream(url)
    assert joined.response.status_code == 200
    assert next(iter(joined))["data"]["message_id"] == head[0]["data"]["message_id"]
    joined.close()
    requests.post(f"{base}/conversations/stop/{endless}", timeout=10)
    done = list(first)[-1]
    assert done["data"]["finish_reason"] == "cancelled"
    assert requests.get(url, headers={"Last-Event-ID": done["id"]}, timeout=10).status_code == 204
    # Requests that start nothing do not count either: bad options, a chat with nothing to answer.
    assert requests.get(infer(base, endless, "max_tokens=0"), timeout=10).status_code == 422
    assert requests.get(infer(base, new_chat(base)), timeout=10).status_code == 409

    assert read_events(infer(base, new_chat(base, QUESTION)))[-1]["event"] == "done"  # 2 of 2
    refused = new_chat(base, QUESTION)
    for route in ("inference", "inference_internet"):
        assert_too_many(requests.get(infer(base, refused, route=route), timeout=10))
    assert len(history(base, refused)) == 1  # nothing was answered
    health = requests.get(f"{base}/health", timeout=10).json()
    assert health["model"]["replies"] == {"running": 0, "waiting": 0}  # nothing was queued
    # Only starting replies is limited: everything else goes on.
    assert requests.get(f"{base}/chats/", timeout=10).status_code == 200
    assert requests.post(f"{base}/conversations/stop/{refused}", timeout=10).status_code == 200


def test_no_limits_by_default(start_server, client):
    base = start_server().url
    for _ in range(3):  # more than the limits the other tests set, and replies too
        assert read_events(infer(base, new_chat(base, QUESTION), f"max_tokens=2&{GREEDY}"))[-1]["event"] == "done"
    assert all(requests.get(f"{base}/chats/", timeout=10).status_code == 200 for _ in range(100))


# The key function, in-process: the client address comes from the WSGI environ (on the real server everything comes
# from 127.0.0.1), the person from their keys.


@pytest.fixture
def limited(app, database_url, client):  # client: the people made here are gone afterwards
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_RATE_LIMIT": "2/minute"})


def statuses(client, address: str, key: str | None = None, times: int = 3) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return [
        client.get("/chats/", headers=headers, environ_base={"REMOTE_ADDR": address}).status_code for _ in range(times)
    ]


def test_limits_count_per_person_else_per_address(limited):
    requests_of = limited.test_client()
    assert statuses(requests_of, "10.0.0.1") == [200, 200, 429]
    assert statuses(requests_of, "10.0.0.2") == [200, 200, 429]  # another address has its own count
    with limited.app_context():
        alice, bob = people.create_user("alice", "password-a"), people.create_user("bob", "password-b")
        alice_key, alice_other_key, bob_key = (people.new_key(person)[1] for person in (alice, alice, bob))
        db.session.commit()
    # A person has their own count wherever they come from, shared by all their keys.
    assert statuses(requests_of, "10.0.0.1", alice_key, times=1) == [200]
    assert statuses(requests_of, "10.0.0.3", alice_other_key) == [200, 429, 429]
    assert statuses(requests_of, "10.0.0.1", bob_key, times=1) == [200]


def test_the_key_function_prefers_the_person(app):
    with app.test_request_context(environ_base={"REMOTE_ADDR": "10.1.2.3"}):
        assert client_key() == "10.1.2.3"
        g.person = people.Person(7, "alice", False)
        assert client_key() == "person:7"


@pytest.mark.parametrize("name", ["CHATAPI_RATE_LIMIT", "CHATAPI_RATE_LIMIT_REPLIES"])
def test_a_bad_limit_stops_the_app_with_its_name(database_url, name):
    with pytest.raises(ValueError, match=name):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, name: "lots"})


def test_the_counts_in_redis_go_under_the_redis_prefix(tmp_path):
    """As every key chatapi writes (CHATAPI_REDIS_PREFIX): several deployments may share one Redis."""
    prefix = f"chatapi-test-{uuid.uuid4().hex[:8]}:"
    address = ".".join(str(random.randint(1, 254)) for _ in range(4))  # this test's own counts
    settings = {
        "CHATAPI_RATE_LIMIT": "2/minute",
        "CHATAPI_RATE_LIMIT_STORAGE": REDIS_URL,
        "CHATAPI_REDIS_PREFIX": prefix,
    }
    limited = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/chatapi.db", **settings})
    store = redis.Redis.from_url(REDIS_URL)
    try:
        client = limited.test_client()
        got = [client.get("/openapi.json", environ_base={"REMOTE_ADDR": address}).status_code for _ in range(3)]
        assert got == [200, 200, 429]
        keys = [key.decode() for key in store.scan_iter(match=f"*{address}*")]
        assert keys and all(key.startswith(prefix) for key in keys), keys
    finally:
        store.close()
        forget_keys(prefix)

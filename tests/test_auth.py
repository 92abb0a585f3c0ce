"""API keys, the page's session cookie and the same-origin rule (chatapi/auth.py), against the real server, with the
keys of CHATAPI_API_KEYS (they act as the admin named admin). People, their keys and sessions: tests/test_people.py."""

import hashlib
import os
import runpy
import subprocess
import sys
import time
import uuid
from http.cookies import SimpleCookie

import pytest
import requests
import sqlalchemy as sa
from flask import g

from chatapi import create_app, people
from chatapi.extensions import db
from chatapi.models import Chat
from tests.support.chats import GREEDY, QUESTION, infer
from tests.support.client import snapshot
from tests.support.server import FAST_STREAM_SETTINGS, ROOT, Server, free_port, migrate, stop_process
from tests.support.sse import EventStream

KEY = "test-key-" + uuid.uuid4().hex
OTHER_KEY = "other-key-" + uuid.uuid4().hex
COOKIE = "chatapi_session"
# The module's server is sent hundreds of wrong keys from one address on purpose (each route, each wrong kind):
# the limit on them is tested on servers of its own.
KEYED = {
    "CHATAPI_API_KEYS": f"{KEY}, {OTHER_KEY}",
    "CHATAPI_RATE_LIMIT_AUTH_FAILURES": "10000/minute",
    **FAST_STREAM_SETTINGS,
}
SHORT_REPLY = f"max_tokens=8&{GREEDY}"
CHAT_FILE = {"name": "imported", "created_at": "2023-08-05T14:48:00Z", "updated_at": "2023-08-05T14:48:00Z"}


def bearer(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def keyed_server(app, database_url, tmp_path_factory):
    """One server with two keys for the module."""
    server = Server(database_url, tmp_path_factory.mktemp("keyed") / "gunicorn.log", **KEYED)
    yield server.wait_until_up().url
    server.stop()


def make_chat(base: str, *messages: str, headers: dict | None = None) -> tuple[str, list[str]]:
    """A chat with Human messages, made with the key; its id and its messages' ids."""
    headers = bearer() if headers is None else headers
    chat = requests.post(f"{base}/chats/create", json={"name": "keyed"}, headers=headers, timeout=10)
    assert chat.status_code == 201, chat.text
    ids = []
    for message in messages:
        body = {"chat_id": chat.json()["id"], "role": "Human", "message": message}
        created = requests.post(f"{base}/conversations/create", json=body, headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    return chat.json()["id"], ids


def every_route_kind(base: str, chat_id: str, message_id: str) -> list[tuple[str, str, dict | None]]:
    """One request of each kind: list, read, create, update, stream (both modes), stop, delete, unknown."""
    return [
        ("GET", f"{base}/chats/", None),
        ("GET", f"{base}/chats/{chat_id}", None),
        ("GET", f"{base}/chats/{chat_id}/conversations", None),
        ("GET", f"{base}/conversations/?chat_id={chat_id}", None),
        ("GET", f"{base}/conversations/{message_id}", None),
        ("POST", f"{base}/chats/create", {"name": "sneaky"}),
        ("POST", f"{base}/conversations/create", {"chat_id": chat_id, "role": "Human", "message": "sneaky"}),
        ("PUT", f"{base}/chats/update/{chat_id}", {"name": "renamed"}),
        ("PUT", f"{base}/conversations/update/{message_id}", {"message": "edited"}),
        ("GET", infer(base, chat_id, SHORT_REPLY), None),
        ("GET", infer(base, chat_id, SHORT_REPLY, route="inference_internet"), None),
        ("POST", f"{base}/conversations/stop/{chat_id}", None),
        ("GET", f"{base}/chats/{chat_id}/export", None),
        ("POST", f"{base}/chats/import", {"chatapi_export": 1, "chat": CHAT_FILE, "conversations": []}),
        ("DELETE", f"{base}/chats/{chat_id}/conversations?after={message_id}", None),
        ("DELETE", f"{base}/conversations/delete/{message_id}", None),
        ("DELETE", f"{base}/chats/delete/{chat_id}", None),
        ("GET", f"{base}/no/such/route", None),
    ]


def check_unauthorized(response: requests.Response, message: str = "") -> None:
    assert response.status_code == 401, (response.request.method, response.request.url, response.text)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == 401 and body["status"] == "Unauthorized" and message in body["message"]
    assert "Set-Cookie" not in response.headers


def chats_left(app) -> int:
    with app.app_context():
        count = db.session.scalar(sa.select(sa.func.count()).select_from(Chat))
        db.session.remove()
        return count


def replies_running(base: str) -> dict:
    """The model's counts, which /health tells keyed requests only."""
    return requests.get(f"{base}/health", headers=bearer(), timeout=10).json()["model"]["replies"]


def session_cookie(base: str, key: str = KEY, headers: dict | None = None) -> SimpleCookie:
    response = requests.post(f"{base}/session", json={"key": key}, headers=headers or {}, timeout=10)
    assert response.status_code == 204, response.text
    assert response.content == b""
    cookie = SimpleCookie()
    cookie.load(response.headers["Set-Cookie"])
    return cookie


def with_cookie(cookie: SimpleCookie, **headers: str) -> dict:
    return {"Cookie": f"{COOKIE}={cookie[COOKIE].value}", **headers}


def test_without_the_right_key_every_route_is_401_and_nothing_changes(keyed_server, app, client):
    base = keyed_server
    chat_id, (message_id,) = make_chat(base, QUESTION)
    before = snapshot(app)
    wrong = [
        {},
        bearer("not-" + KEY),
        bearer(KEY[:-1]),
        bearer(KEY + "x"),
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": "Bearer caf\xe9"},  # not ASCII: still a plain 401
        {"Cookie": f"{COOKIE}=forged.value.here"},
    ]
    for headers in wrong:
        for method, url, body in every_route_kind(base, chat_id, message_id):
            check_unauthorized(requests.request(method, url, json=body, headers=headers, timeout=10))
    # A missing key is told how to send one; a wrong one that it is wrong.
    check_unauthorized(requests.get(f"{base}/chats/", timeout=10), "Authorization: Bearer <key>")
    check_unauthorized(requests.get(f"{base}/chats/", headers=bearer("nope"), timeout=10), "not valid")

    assert snapshot(app) == before  # no chat, message, rename, edit, reply or deletion
    assert replies_running(base) == {"running": 0, "waiting": 0}  # the rejected streams started no reply


def test_either_key_opens_every_route(keyed_server, app, client):
    base = keyed_server
    for key in (KEY, OTHER_KEY):
        chat_id, (message_id,) = make_chat(base, QUESTION, headers=bearer(key))
        listed = requests.get(f"{base}/chats/", headers=bearer(key), timeout=10)
        assert listed.status_code == 200 and chat_id in [chat["id"] for chat in listed.json()]
        stream = EventStream(infer(base, chat_id, SHORT_REPLY), headers=bearer(key))
        assert stream.response.status_code == 200
        events = list(stream)
        assert events[-1]["event"] == "done" and events[-1]["data"]["message"]["role"] == "Assistant"
        history = requests.get(f"{base}/chats/{chat_id}/conversations", headers=bearer(key), timeout=10).json()
        assert [m["role"] for m in history] == ["Human", "Assistant"]
        edited = requests.put(
            f"{base}/conversations/update/{message_id}", json={"message": "edited"}, headers=bearer(key), timeout=10
        )
        assert edited.status_code == 200
        exported = requests.get(f"{base}/chats/{chat_id}/export", headers=bearer(key), timeout=10)
        assert exported.status_code == 200 and len(exported.json()["conversations"]) == 2
        imported = requests.post(f"{base}/chats/import", json=exported.json(), headers=bearer(key), timeout=10)
        assert imported.status_code == 201
        for made in (chat_id, imported.json()["id"]):
            assert requests.delete(f"{base}/chats/delete/{made}", headers=bearer(key), timeout=10).status_code == 200
    assert chats_left(app) == 0  # every chat made here was deleted
    # The scheme's name is case-insensitive (RFC 7235).
    assert requests.get(f"{base}/chats/", headers={"Authorization": f"bearer {KEY}"}, timeout=10).status_code == 200


def test_health_the_page_and_the_api_document_need_no_key(keyed_server, client):
    base = keyed_server
    health = requests.get(f"{base}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for path in ("/", "/static/main.js", "/static/app.css", "/static/favicon.svg", "/docs", "/openapi.json"):
        assert requests.get(base + path, timeout=10).status_code == 200, path
    spec = requests.get(f"{base}/openapi.json", timeout=10).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert schemes["session"]["in"] == "cookie" and schemes["session"]["name"] == COOKIE
    assert spec["security"] == [{"bearer": []}, {"session": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    session = spec["paths"]["/session"]
    assert session["post"]["security"] == [] and set(session["post"]["responses"]) >= {"204", "401", "422"}
    assert set(spec["components"]["schemas"]["Session"]["properties"]) == {"name", "password", "key"}
    assert "204" in session["delete"]["responses"]
    assert "security" not in spec["paths"]["/chats/"]["get"]  # the document-wide rule applies


def test_while_accounts_are_off_the_document_still_names_the_schemes_and_there_is_no_session(client):
    """Accounts can come on at any time (a person is made), so the document always says how to authenticate; a
    fresh box with nobody still serves every route without (tests/test_people.py) and has no session to open."""
    spec = client.get("/openapi.json").json
    assert spec["security"] == [{"bearer": []}, {"session": []}]
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "session"}
    assert "/session" in spec["paths"]
    assert client.post("/session", json={"key": "anything"}).status_code == 404
    assert client.post("/session", json={"key": ""}).status_code == 404  # before the body is looked at
    assert client.post("/session", json={"name": "x", "password": "y"}).status_code == 404
    assert client.delete("/session").status_code == 404
    assert "Set-Cookie" not in client.post("/session", json={"key": "anything"}).headers


def test_a_session_cookie_opens_every_route_like_the_key(keyed_server, app, client):
    base = keyed_server
    refused = requests.post(f"{base}/session", json={"key": "not-" + KEY}, timeout=10)
    check_unauthorized(refused, "not valid")
    for bad in ({}, {"key": ""}, {"key": 5}, {"key": "\ud800"}, {"name": "admin"}, {"key": KEY, "name": "admin"}):
        response = requests.post(f"{base}/session", json=bad, timeout=10)
        assert response.status_code == 422 and "Set-Cookie" not in response.headers, bad

    cookie = session_cookie(base)
    attributes = cookie[COOKIE]
    assert attributes["httponly"] is True and attributes["samesite"] == "Strict" and attributes["path"] == "/"
    assert attributes["secure"] == ""  # plain http here
    assert int(attributes["max-age"]) == 7 * 24 * 3600
    # A random token, which names neither the key nor its id; the server keeps its digest as the session's id.
    assert KEY not in attributes.value and key_id(KEY) not in attributes.value and len(attributes.value) >= 32
    with app.app_context():
        session = db.session.get(people.SignIn, hashlib.sha256(attributes.value.encode()).hexdigest())
        assert session is not None and session.env_key_id == key_id(KEY) and session.user.name == "admin"
        db.session.remove()

    # The page's own requests, as a browser sends them (Sec-Fetch-Site; Origin on a POST).
    page = with_cookie(cookie, **{"Sec-Fetch-Site": "same-origin", "Origin": base})
    created = requests.post(f"{base}/chats/create", json={"name": "by cookie"}, headers=page, timeout=10)
    assert created.status_code == 201, created.text
    chat_id = created.json()["id"]
    body = {"chat_id": chat_id, "role": "Human", "message": QUESTION}
    assert requests.post(f"{base}/conversations/create", json=body, headers=page, timeout=10).status_code == 201
    listed = requests.get(f"{base}/chats/", headers=with_cookie(cookie), timeout=10)
    assert listed.status_code == 200 and [chat["id"] for chat in listed.json()] == [chat_id]
    # EventSource sends the cookie, and nothing else.
    stream = EventStream(infer(base, chat_id, SHORT_REPLY), headers=with_cookie(cookie))
    assert stream.response.status_code == 200, stream.response.text
    assert list(stream)[-1]["event"] == "done"
    deleted = requests.delete(f"{base}/chats/delete/{chat_id}", headers=page, timeout=10)
    assert deleted.status_code == 200
    assert chats_left(app) == 0


def test_cookie_requests_that_change_something_must_come_from_the_same_origin(keyed_server, app, client):
    base = keyed_server
    chat_id, (message_id,) = make_chat(base, QUESTION)
    cookie = session_cookie(base)
    before = snapshot(app)
    cross = [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"},  # another port of this host
        {"Sec-Fetch-Site": "cross-site", "Origin": base},  # Sec-Fetch-Site decides when given
        {"Origin": "https://evil.example"},  # an older browser: Origin only
        {"Origin": "null"},  # a sandboxed frame, a data: page
        {"Origin": base.replace("127.0.0.1", "localhost")},
    ]
    changes = [
        request
        for request in every_route_kind(base, chat_id, message_id)
        if request[0] != "GET"  # reading is allowed: another site cannot see the answer
    ]
    assert len(changes) == 9  # create, add, rename, edit, stop, import, delete after, delete one, delete chat
    for headers in cross:
        for method, url, body in changes:
            response = requests.request(method, url, json=body, headers=with_cookie(cookie, **headers), timeout=10)
            assert response.status_code == 403, (headers, method, url, response.text)
            assert response.json()["code"] == 403 and "another site" in response.json()["message"]
    assert snapshot(app) == before

    # The same requests with the key in the header are not a browser's doing: the origin does not matter.
    evil = {**bearer(), "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    renamed = requests.put(f"{base}/chats/update/{chat_id}", json={"name": "by key"}, headers=evil, timeout=10)
    assert renamed.status_code == 200 and renamed.json()["name"] == "by key"
    # From the page: Sec-Fetch-Site same-origin or none (typed in), or the page's own Origin, or no browser at all.
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": base}, {}):
        name = f"by cookie {len(headers)}"
        renamed = requests.put(
            f"{base}/chats/update/{chat_id}", json={"name": name}, headers=with_cookie(cookie, **headers), timeout=10
        )
        assert renamed.status_code == 200 and renamed.json()["name"] == name, headers
    # Reading with the cookie from anywhere is allowed (the browser keeps the answer from the other site).
    read = requests.get(f"{base}/chats/{chat_id}", headers=with_cookie(cookie, **cross[0]), timeout=10)
    assert read.status_code == 200


def test_delete_session_clears_the_cookie_and_ends_the_session(keyed_server, client):
    base = keyed_server
    cookie = session_cookie(base)
    ended = requests.delete(f"{base}/session", headers=with_cookie(cookie), timeout=10)
    assert ended.status_code == 204
    cleared = SimpleCookie()
    cleared.load(ended.headers["Set-Cookie"])
    assert cleared[COOKIE].value == "" and cleared[COOKIE]["max-age"] == "0"
    assert cleared[COOKIE]["httponly"] is True and cleared[COOKIE]["samesite"] == "Strict"
    # A browser that honours it sends no cookie any more: 401.
    check_unauthorized(requests.get(f"{base}/chats/", timeout=10))
    # The session is a record on the server, deleted: a copy of the cookie kept elsewhere stops working too.
    check_unauthorized(requests.get(f"{base}/chats/", headers=with_cookie(cookie), timeout=10))


def test_a_session_expires(start_server, client):
    server = start_server(CHATAPI_API_KEYS=KEY, CHATAPI_SESSION_SECONDS="2")
    cookie = session_cookie(server.url)
    assert cookie[COOKIE]["max-age"] == "2"
    assert requests.get(f"{server.url}/chats/", headers=with_cookie(cookie), timeout=10).status_code == 200
    time.sleep(3.5)
    check_unauthorized(requests.get(f"{server.url}/chats/", headers=with_cookie(cookie), timeout=10))
    assert requests.get(f"{server.url}/chats/", headers=bearer(), timeout=10).status_code == 200


def test_sessions_outlive_a_restart_and_end_when_their_key_is_taken_away(start_server, client):
    """Sessions are records in the database: a restart keeps them; one opened with a CHATAPI_API_KEYS key that is
    no longer configured ends, one opened with a key still there stays."""
    first = start_server(CHATAPI_API_KEYS=f"{KEY},{OTHER_KEY}")
    mine, other = session_cookie(first.url), session_cookie(first.url, OTHER_KEY)
    stop_process(first.process)  # as a restart does: Server.stop would take the keys' admin away with it
    same = start_server(CHATAPI_API_KEYS=f"{OTHER_KEY},{KEY}")
    for cookie in (mine, other):
        assert requests.get(f"{same.url}/chats/", headers=with_cookie(cookie), timeout=10).status_code == 200
    stop_process(same.process)
    fewer = start_server(CHATAPI_API_KEYS=KEY)
    assert requests.get(f"{fewer.url}/chats/", headers=with_cookie(mine), timeout=10).status_code == 200
    check_unauthorized(requests.get(f"{fewer.url}/chats/", headers=with_cookie(other), timeout=10))


def test_keys_from_a_file(start_server, client, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# chatapi keys\n\n  {KEY}  \n# {OTHER_KEY}\nthird-{KEY}\n")
    server = start_server(CHATAPI_API_KEYS_FILE=str(keys))
    for key in (KEY, f"third-{KEY}"):
        assert requests.get(f"{server.url}/chats/", headers=bearer(key), timeout=10).status_code == 200
    for key in (OTHER_KEY, f"# {OTHER_KEY}", "# chatapi keys", ""):
        check_unauthorized(requests.get(f"{server.url}/chats/", headers=bearer(key), timeout=10))


@pytest.mark.parametrize("contents", [None, "# only a comment\n\n"])
def test_a_keys_file_that_names_no_key_stops_the_server(contents, tmp_path):
    """Whoever set CHATAPI_API_KEYS_FILE wanted keys: a missing or empty file is no reason to serve everyone."""
    keys = tmp_path / "keys"
    if contents is not None:
        keys.write_text(contents)
    server = Server(f"sqlite:///{tmp_path}/chatapi.db", tmp_path / "gunicorn.log", CHATAPI_API_KEYS_FILE=str(keys))
    output = server.refusal()
    assert str(keys) in output
    assert ("holds no key" if contents else "No such file") in output


def assert_guessing_refused(response: requests.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["message"].startswith("too many wrong keys, sessions or passwords from this address")
    assert 0 < int(response.headers["Retry-After"]) <= 60


def test_wrong_keys_are_limited_per_client_then_every_key_gets_429(start_server, client):
    """Keys cannot be guessed at the server's speed: CHATAPI_RATE_LIMIT_AUTH_FAILURES counts wrong keys and sessions
    (POST /session's too) per client address; over it, any request with a key or session gets 429 before anything
    is checked, the right key too, so that the answer says nothing of the key guessed."""
    base = start_server(CHATAPI_API_KEYS=KEY, CHATAPI_RATE_LIMIT_AUTH_FAILURES="3/minute").url
    for _ in range(5):  # no key at all: nothing guessed, never counted
        check_unauthorized(requests.get(f"{base}/chats/", timeout=10), "Authorization: Bearer <key>")
    check_unauthorized(requests.get(f"{base}/chats/", headers=bearer("not-" + KEY), timeout=10), "not valid")
    check_unauthorized(requests.post(f"{base}/session", json={"key": "not-" + KEY}, timeout=10), "not valid")
    forged = {"Cookie": f"{COOKIE}=forged.value.here"}
    check_unauthorized(requests.get(f"{base}/chats/", headers=forged, timeout=10), "session is not valid")

    for headers in (bearer("not-" + KEY), bearer(KEY), forged):
        assert_guessing_refused(requests.get(f"{base}/chats/", headers=headers, timeout=10))
    assert_guessing_refused(requests.post(f"{base}/session", json={"key": KEY}, timeout=10))
    # Monitors still get their answer, a stranger's: no key is checked for /health either.
    health = requests.get(f"{base}/health", headers=bearer(KEY), timeout=10)
    assert health.status_code == 200 and health.json()["model"] == {"status": "ok"}
    check_unauthorized(requests.get(f"{base}/chats/", timeout=10), "Authorization: Bearer <key>")


def test_the_wrong_key_limit_is_on_by_default_and_counts_per_address(app, database_url):
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}
    keyed = create_app({**config, "CHATAPI_API_KEYS": (KEY,)})
    create_app(config)  # every app shares one API document, the last app's: the open server's for the next tests
    assert keyed.config["CHATAPI_RATE_LIMIT"] == ""  # no other limit
    assert keyed.config["CHATAPI_RATE_LIMIT_AUTH_FAILURES"] == "10/minute;100/hour"
    client = keyed.test_client()

    def status(address: str, key: str) -> int:
        return client.get("/chats/", headers=bearer(key), environ_base={"REMOTE_ADDR": address}).status_code

    assert [status("10.0.0.1", "not-" + KEY) for _ in range(11)] == [401] * 10 + [429]
    assert status("10.0.0.1", KEY) == 429
    assert [status("10.0.0.2", KEY), status("10.0.0.2", "not-" + KEY)] == [200, 401]  # its own count


def test_a_key_shorter_than_16_characters_stops_the_server(database_url, tmp_path):
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}
    short = "x" * 15
    with pytest.raises(ValueError, match="CHATAPI_API_KEYS .*shorter than 16 characters") as raised:
        create_app({**config, "CHATAPI_API_KEYS": (KEY, short)})
    assert short not in str(raised.value) and key_id(short) in str(raised.value)  # named by its id only
    create_app({**config, "CHATAPI_API_KEYS": ("x" * 16,)})
    create_app(config)  # the open server's API document again
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\nshort-key\n")
    output = Server(database_url, tmp_path / "gunicorn.log", CHATAPI_API_KEYS_FILE=str(keys)).refusal()
    assert "shorter than 16 characters" in output and key_id("short-key") in output


def test_the_cookie_is_secure_over_https_behind_a_trusted_proxy_only(start_server, client):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "chat.example"}
    # The proxy's public name is one the server must be told it answers to (chatapi/guard.py).
    trusting = start_server(CHATAPI_API_KEYS=KEY, CHATAPI_TRUST_PROXY="1", CHATAPI_ALLOWED_HOSTS="chat.example")
    cookie = session_cookie(trusting.url, headers=forwarded)
    assert cookie[COOKIE]["secure"] is True
    assert session_cookie(trusting.url)[COOKIE]["secure"] == ""  # the proxy said http
    # The page's origin is the one the proxy was asked for.
    page = with_cookie(cookie, Origin="https://chat.example", **forwarded)
    created = requests.post(f"{trusting.url}/chats/create", json={"name": "p"}, headers=page, timeout=10)
    assert created.status_code == 201

    distrusting = start_server(CHATAPI_API_KEYS=KEY)
    assert session_cookie(distrusting.url, headers=forwarded)[COOKIE]["secure"] == ""
    page = with_cookie(session_cookie(distrusting.url), Origin="https://chat.example", **forwarded)
    created = requests.post(f"{distrusting.url}/chats/create", json={"name": "p"}, headers=page, timeout=10)
    assert created.status_code == 403


def test_g_person_names_who_is_asking_for_the_hooks_after_it(app, client, database_url):
    """Rate limits, usage and metrics, registered later, read g.person: set by either credential (the keys of
    CHATAPI_API_KEYS act as the admin named admin), never on the open routes nor while accounts are off."""
    seen = []
    open_app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    open_app.before_request(lambda: seen.append(g.get("person")))
    assert open_app.test_client().get("/chats/").status_code == 200
    assert open_app.test_client().get("/chats/", headers=bearer()).status_code == 200  # a box with nobody ignores it
    assert seen == [None, None]

    seen.clear()
    keyed = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_API_KEYS": (KEY, OTHER_KEY)})
    keyed.before_request(lambda: seen.append(g.get("person")))
    client = keyed.test_client()
    assert client.get("/chats/", headers=bearer(OTHER_KEY)).status_code == 200
    assert client.post("/session", json={"key": KEY}).status_code == 204
    assert client.get("/chats/").status_code == 200  # the test client keeps the cookie
    assert client.get("/health").status_code in (200, 503)
    with app.app_context():
        admin = people.find_user("admin").person()
        db.session.remove()
    assert admin == people.Person(admin.id, "admin", True)
    assert seen == [admin, None, admin, None]  # /session itself and /health name nobody

    # The admin now exists: the box without keys is no longer open, and a person's own key names them.
    seen.clear()
    with app.app_context():
        user = people.create_user("alice", "correct horse battery staple")
        _, alice_key = people.new_key(user)
        db.session.commit()
        alice = user.person()
        db.session.remove()
    assert open_app.test_client().get("/chats/").status_code == 401
    assert open_app.test_client().get("/chats/", headers=bearer(alice_key)).status_code == 200
    assert seen == [alice] and alice.name == "alice" and not alice.admin  # the 401 ran no hook after it


# Open by accident: gunicorn.conf.py refuses a non-loopback address without keys.


def gunicorn_conf() -> dict:
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_no_keys_and_a_public_address_refuse_to_start(tmp_path):
    server = Server(f"sqlite:///{tmp_path}/chatapi.db", tmp_path / "gunicorn.log", bind_host="0.0.0.0")
    output = server.refusal()
    assert f"refusing to serve 0.0.0.0:{server.port} without accounts or API keys" in output
    ways = ("flask users create NAME --admin", "CHATAPI_API_KEYS=", "CHATAPI_API_KEYS_FILE=", "HOST=127.0.0.1")
    for advice in (*ways, "CHATAPI_ALLOW_NO_AUTH=1"):
        assert advice in output
    assert "Booting worker" not in output  # refused before anything was served

    # The same through HOST and PORT, as `make run` and the Procfile pass them to gunicorn.conf.py.
    port = free_port()
    env = dict(os.environ, HOST="0.0.0.0", PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path}/chatapi.db")
    command = [sys.executable, "-m", "gunicorn", "wsgi:app"]
    process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert process.returncode != 0 and f"refusing to serve 0.0.0.0:{port}" in process.stderr


def test_allow_no_auth_serves_a_public_address_and_warns(tmp_path):
    url = f"sqlite:///{tmp_path}/chatapi.db"
    migrate(url)  # a box with nobody: the users table is there, and empty
    server = Server(url, tmp_path / "gunicorn.log", bind_host="0.0.0.0", CHATAPI_ALLOW_NO_AUTH="1")
    try:
        server.wait_until_up()
        assert requests.get(f"{server.url}/openapi.json", timeout=10).status_code == 200
        assert requests.get(f"{server.url}/chats/", timeout=10).status_code == 200
    finally:
        server.stop()
    assert f"serving 0.0.0.0:{server.port} WITHOUT API KEYS (CHATAPI_ALLOW_NO_AUTH=1)" in server.output()


def test_keys_serve_a_public_address_without_a_warning(tmp_path):
    log = tmp_path / "gunicorn.log"
    server = Server(f"sqlite:///{tmp_path}/chatapi.db", log, bind_host="0.0.0.0", CHATAPI_API_KEYS=KEY)
    try:
        server.wait_until_up()
        check_unauthorized(requests.get(f"{server.url}/chats/", timeout=10))
    finally:
        server.stop()
    assert "WITHOUT API KEYS" not in server.output() and "refusing" not in server.output()


def test_accounts_serve_a_public_address_without_a_warning(app, client, database_url, tmp_path):
    """A person in the database turns accounts on: no keys are needed to serve a public address, since every
    request must sign in all the same."""
    with app.app_context():
        people.create_user("alice", "correct horse battery staple", admin=True)
        db.session.commit()
        db.session.remove()
    server = Server(database_url, tmp_path / "gunicorn.log", bind_host="0.0.0.0")
    try:
        server.wait_until_up()
        check_unauthorized(requests.get(f"{server.url}/chats/", timeout=10))
        signed_in = requests.post(
            f"{server.url}/session", json={"name": "alice", "password": "correct horse battery staple"}, timeout=10
        )
        assert signed_in.status_code == 204
    finally:
        server.stop()
    assert "WITHOUT API KEYS" not in server.output() and "refusing" not in server.output()


@pytest.mark.parametrize(
    "address, local",
    [
        (("127.0.0.1", 5000), True),
        (("127.0.0.2", 5000), True),
        (("::1", 5000), True),
        (("localhost", 5000), True),
        ("/run/chatapi.sock", True),
        (("0.0.0.0", 5000), False),
        (("::", 5000), False),
        (("", 5000), False),
        (("192.0.2.10", 5000), False),
        (("no-such-host.invalid", 5000), False),
        (3, False),  # fd://3: a socket made elsewhere
    ],
)
def test_which_addresses_count_as_loopback(address, local):
    assert gunicorn_conf()["local_only"](address) is local

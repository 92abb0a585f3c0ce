"""Read-only share links (issue 26, chatapi/shares.py), on both databases: made, listed and revoked by the chat's
owner alone; /s/<token> open to anyone, keys on or off; a snapshot that later messages and edits do not change;
expired, revoked and unknown links the same 404; a link gone with its chat; the token stored only as its hash,
never a key, and never in the server's log."""

import hashlib
import http.client
import re
import uuid
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa

from chatapi import create_app, people, shares
from chatapi.extensions import db
from chatapi.models import utcnow
from chatapi.shares import MAX_LIVE_SHARES, Share
from tests.support import wait_for
from tests.support.client import TIMESTAMP, add_message, snapshot

URL = re.compile(r"^/s/[A-Za-z0-9_-]{43}$")  # 32 random bytes, URL-safe base64 without padding
PASSWORD = "correct horse battery staple"
KEY = "shares-key-" + uuid.uuid4().hex
SHARED_PAGE_HEADERS = {
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def share(client, chat_id: str, expires_in: int | None = None, **kwargs) -> dict:
    response = client.post(f"/chats/{chat_id}/shares", json={"expires_in": expires_in}, **kwargs)
    assert response.status_code == 201, response.json
    return response.json


def chat_with_messages(client, name: str = "Shared", **kwargs) -> tuple[str, list[dict]]:
    chat_id = client.post("/chats/create", json={"name": name}, **kwargs).json["id"]
    said = []
    for role, text in (("Human", "What is the capital of France?"), ("Assistant", "**Paris**, on the Seine.")):
        body = {"chat_id": chat_id, "role": role, "message": text}
        response = client.post("/conversations/create", json=body, **kwargs)
        assert response.status_code == 201
        said.append(response.json)
    return chat_id, said


def never_was(client) -> dict:
    """The 404 of a token that never existed."""
    response = client.get(f"/s/{uuid.uuid4().hex}")
    assert response.status_code == 404 and response.mimetype == "application/json"
    return response.json


def shares_in_database(app) -> list[Share]:
    with app.app_context():
        rows = db.session.scalars(sa.select(Share)).all()
        db.session.expunge_all()
        db.session.remove()
    return rows


def test_make_list_open_and_revoke_a_link(client, app):
    chat_id, _ = chat_with_messages(client)
    made = share(client, chat_id, 7 * 86400)
    assert set(made) == {"id", "url", "created_at", "expires_at"}
    assert URL.match(made["url"]) and TIMESTAMP.match(made["created_at"]) and TIMESTAMP.match(made["expires_at"])
    with app.app_context():
        row = db.session.get(Share, uuid.UUID(made["id"]))
        assert row.expires_at - row.created_at == timedelta(days=7)
        db.session.remove()
    forever = share(client, chat_id, None)
    assert forever["expires_at"] is None and forever["url"] != made["url"]

    # Listed newest first, without their URLs (the server does not keep them).
    listed = client.get(f"/chats/{chat_id}/shares")
    assert listed.status_code == 200
    assert listed.json == [{key: link[key] for key in ("id", "created_at", "expires_at")} for link in (forever, made)]

    # Opened by anyone: the export document, and the page.
    exported = client.get(f"/chats/{chat_id}/export").json
    document = client.get(made["url"], query_string={"format": "json"})
    assert document.status_code == 200 and document.mimetype == "application/json"
    assert document.json == exported and document.json["conversations"][1]["message"] == "**Paris**, on the Seine."
    page = client.get(made["url"])
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<meta name="robots" content="noindex">' in html and "/static/shared.js" in html
    for response in (document, page, client.get("/s/unknown")):
        for name, value in SHARED_PAGE_HEADERS.items():
            assert response.headers[name] == value, name
        assert response.headers["Content-Security-Policy"] == client.get("/").headers["Content-Security-Policy"]
    assert client.get(made["url"], query_string={"format": "xml"}).status_code == 422

    # Revoked: a 404 exactly like a token that never was, at once; the other link still works.
    revoked = client.delete(f"/chats/{chat_id}/shares/{made['id']}")
    assert revoked.status_code == 200 and revoked.json == {"id": made["id"], "deleted": True}
    for url in (made["url"], made["url"] + "?format=json"):
        gone = client.get(url)
        assert gone.status_code == 404 and gone.json == never_was(client)
    assert [link["id"] for link in client.get(f"/chats/{chat_id}/shares").json] == [forever["id"]]
    assert client.get(forever["url"], query_string={"format": "json"}).status_code == 200
    again = client.delete(f"/chats/{chat_id}/shares/{made['id']}")
    assert again.status_code == 404 and made["id"] in again.json["message"]
    for unknown in ("not-a-uuid", str(uuid.uuid4())):
        assert client.delete(f"/chats/{chat_id}/shares/{unknown}").status_code == 404


def test_malformed_tokens_get_the_same_404(client):
    expected = never_was(client)
    for token in ("x", "a" * 43, "%00", "..%2F..%2Fchats%2F", "é" * 10, "a/b", "a" * 2000):
        response = client.get(f"/s/{token}")
        assert response.status_code == 404, token
        assert response.json == expected, token


def test_the_snapshot_shows_the_chat_as_it_was_when_shared(client):
    chat_id, (question, answer) = chat_with_messages(client)
    before = client.get(f"/chats/{chat_id}/export").json
    link = share(client, chat_id)
    add_message(client, chat_id, "And of Germany?")
    assert client.put(f"/conversations/update/{question['id']}", json={"message": "Edited!"}).status_code == 200
    assert client.delete(f"/conversations/delete/{answer['id']}").status_code == 200
    assert client.put(f"/chats/update/{chat_id}", json={"name": "Renamed"}).status_code == 200
    after = client.get(f"/chats/{chat_id}/export").json
    assert [c["message"] for c in after["conversations"]] == ["Edited!", "And of Germany?"]

    shown = client.get(link["url"], query_string={"format": "json"}).json
    assert shown == before
    assert shown["chat"]["name"] == "Shared"
    assert [c["message"] for c in shown["conversations"]] == [question["message"], answer["message"]]
    # A link made now shows the chat as it is now.
    assert client.get(share(client, chat_id)["url"], query_string={"format": "json"}).json == after


def test_an_expired_link_is_a_404_like_one_that_never_was(client, app):
    chat_id, _ = chat_with_messages(client)
    link = share(client, chat_id, 60)
    assert client.get(link["url"]).status_code == 200
    with app.app_context():
        db.session.execute(sa.update(Share).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        db.session.remove()
    for url in (link["url"], link["url"] + "?format=json"):
        expired = client.get(url)
        assert expired.status_code == 404 and expired.json == never_was(client)
    assert client.get(f"/chats/{chat_id}/shares").json == []  # no longer listed
    # The next link made for the chat clears the expired one away.
    share(client, chat_id)
    assert [row.id for row in shares_in_database(app)] != [uuid.UUID(link["id"])]
    assert len(shares_in_database(app)) == 1


def test_a_chat_larger_than_a_link_may_copy_is_a_413_and_nothing_is_made(client, app, monkeypatch):
    chat_id, _ = chat_with_messages(client)
    monkeypatch.setattr(shares, "MAX_SNAPSHOT_BYTES", 300)  # the chat's document is larger
    refused = client.post(f"/chats/{chat_id}/shares", json={"expires_in": None})
    assert refused.status_code == 413 and "more than a link may copy" in refused.json["message"]
    assert shares_in_database(app) == []
    monkeypatch.setattr(shares, "MAX_SNAPSHOT_BYTES", 100_000)
    share(client, chat_id)
    assert len(shares_in_database(app)) == 1


def test_a_chat_has_at_most_so_many_live_links(client, app):
    chat_id, _ = chat_with_messages(client)
    links = [share(client, chat_id, 3600) for _ in range(MAX_LIVE_SHARES)]
    refused = client.post(f"/chats/{chat_id}/shares", json={"expires_in": None})
    assert refused.status_code == 409 and "revoke" in refused.json["message"]
    assert len(shares_in_database(app)) == MAX_LIVE_SHARES
    # Revoking one, or one expiring, makes room.
    assert client.delete(f"/chats/{chat_id}/shares/{links[0]['id']}").status_code == 200
    share(client, chat_id)
    with app.app_context():
        db.session.execute(sa.update(Share).where(Share.id == uuid.UUID(links[1]["id"])).values(expires_at=utcnow()))
        db.session.commit()
        db.session.remove()
    share(client, chat_id)
    assert client.post(f"/chats/{chat_id}/shares", json={"expires_in": None}).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": -60},
        {"expires_in": 0},
        {"expires_in": 59},
        {"expires_in": "3600"},
        {"expires_in": 3600.5},
        {"expires_in": 315_360_001},
        {"expires_in": 10**30},
        {"expires_in": [3600]},
        {},
    ],
)
def test_bad_input_is_a_422_naming_expires_in_and_makes_nothing(client, app, body):
    chat_id, _ = chat_with_messages(client)
    response = client.post(f"/chats/{chat_id}/shares", json=body)
    assert response.status_code == 422, response.json
    assert set(response.json["errors"]) == {"expires_in"}
    assert shares_in_database(app) == []


def test_a_body_that_is_not_json_makes_nothing(client, app):
    chat_id, _ = chat_with_messages(client)
    assert client.post(f"/chats/{chat_id}/shares", data="expires_in=60").status_code == 415
    assert client.post(f"/chats/{chat_id}/shares", data="{", content_type="application/json").status_code == 400
    assert client.post(f"/chats/{uuid.uuid4()}/shares", json={"expires_in": None}).status_code == 404
    assert shares_in_database(app) == []


def test_deleting_the_chat_deletes_its_links(client, app):
    chat_id, _ = chat_with_messages(client)
    links = [share(client, chat_id), share(client, chat_id, 86400)]
    other_id, _ = chat_with_messages(client, "Another")
    kept = share(client, other_id)
    assert client.delete(f"/chats/delete/{chat_id}").status_code == 200
    for link in links:
        assert client.get(link["url"]).json == never_was(client)
    assert [str(row.id) for row in shares_in_database(app)] == [kept["id"]]
    assert client.get(kept["url"]).status_code == 200


def test_the_token_is_stored_only_as_its_hash(client, app):
    chat_id, _ = chat_with_messages(client)
    link = share(client, chat_id)
    token = link["url"].removeprefix("/s/")
    everything = repr(snapshot(app))
    assert token not in everything
    assert hashlib.sha256(token.encode()).hexdigest() in everything  # the comparison sees the rows at all
    (row,) = shares_in_database(app)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()


# With accounts on.


def make_person(app, name: str, admin: bool = False) -> dict:
    """A person with a key, committed: the headers that send the key."""
    with app.app_context():
        user = people.create_user(name, PASSWORD, admin=admin)
        _, secret = people.new_key(user, "tests")
        db.session.commit()
        db.session.remove()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def keyed_app(app, database_url):
    """An app on the tests' database with a key of CHATAPI_API_KEYS; then an open one again, since every app shares
    one API document, the last app's."""
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}
    yield create_app({**config, "CHATAPI_API_KEYS": (KEY,)})
    create_app(config)


def test_with_keys_on_a_link_needs_no_key_and_its_token_opens_nothing_else(keyed_app, client):
    keyed = keyed_app.test_client()
    as_admin = {"headers": {"Authorization": f"Bearer {KEY}"}}
    chat_id, _ = chat_with_messages(keyed, **as_admin)
    assert keyed.post(f"/chats/{chat_id}/shares", json={"expires_in": None}).status_code == 401  # no key: no link
    link = share(keyed, chat_id, **as_admin)
    token = link["url"].removeprefix("/s/")

    stranger = keyed_app.test_client()
    page = stranger.get(link["url"])
    assert page.status_code == 200 and page.mimetype == "text/html"
    document = stranger.get(link["url"], query_string={"format": "json"})
    assert document.status_code == 200
    assert document.json == keyed.get(f"/chats/{chat_id}/export", **as_admin).json
    # A wrong key or cookie changes nothing for an open page.
    assert stranger.get(link["url"], headers={"Authorization": "Bearer wrong-key-0123456789"}).status_code == 200

    # The token is no key: not as a bearer, not for a session, not for the chat's own routes.
    as_token = {"Authorization": f"Bearer {token}"}
    for path in ("/chats/", f"/chats/{chat_id}", f"/chats/{chat_id}/shares", f"/chats/{chat_id}/export", "/me"):
        assert stranger.get(path, headers=as_token).status_code == 401, path
        assert stranger.get(path).status_code == 401, path
    assert stranger.post("/session", json={"key": token}).status_code == 401
    assert stranger.get(f"/chats/{chat_id}", headers={"Cookie": f"chatapi_session={token}"}).status_code == 401

    assert keyed.delete(f"/chats/{chat_id}/shares/{link['id']}", **as_admin).status_code == 200
    gone = stranger.get(link["url"])
    assert gone.status_code == 404 and gone.json == never_was(stranger)


def test_another_persons_chat_and_links_are_404_on_every_share_route(app, client):
    alice, bob = make_person(app, "alice"), make_person(app, "bob")
    chat_id, _ = chat_with_messages(client, headers=alice)
    link = share(client, chat_id, headers=alice)
    bobs_chat, _ = chat_with_messages(client, "Bob's", headers=bob)
    missing = str(uuid.uuid4())
    before = snapshot(app)
    for method, path, body in (
        ("POST", "/chats/{}/shares", {"expires_in": None}),
        ("GET", "/chats/{}/shares", None),
        ("DELETE", "/chats/{}/shares/" + link["id"], None),
    ):
        others = client.open(path.format(chat_id), method=method, json=body, headers=bob)
        nobodys = client.open(path.format(missing), method=method, json=body, headers=bob)
        assert others.status_code == nobodys.status_code == 404, (method, path)
        assert others.json["message"].replace(chat_id, "<id>") == nobodys.json["message"].replace(missing, "<id>")
    # Alice's link through Bob's own chat: not his.
    assert client.delete(f"/chats/{bobs_chat}/shares/{link['id']}", headers=bob).status_code == 404
    assert snapshot(app) == before
    assert client.get(link["url"], query_string={"format": "json"}).status_code == 200
    assert [s["id"] for s in client.get(f"/chats/{chat_id}/shares", headers=alice).json] == [link["id"]]


def test_a_disabled_persons_links_stop_working_until_they_are_enabled(app, client):
    alice = make_person(app, "alice")
    make_person(app, "root", admin=True)
    chat_id, _ = chat_with_messages(client, headers=alice)
    link = share(client, chat_id, headers=alice)

    def set_disabled(disabled: bool) -> None:
        with app.app_context():
            user = people.find_user("alice")
            if disabled:
                people.disable(user)
            else:
                user.disabled_at = None
            db.session.commit()
            db.session.remove()

    set_disabled(True)
    assert client.get(link["url"]).json == never_was(client)
    set_disabled(False)
    assert client.get(link["url"]).status_code == 200


# The real server's log.


def test_the_token_is_never_in_the_servers_log(start_server, client):
    server = start_server()
    base = server.url
    chat_id = requests.post(f"{base}/chats/create", json={"name": "logged"}, timeout=10).json()["id"]
    made = requests.post(f"{base}/chats/{chat_id}/shares", json={"expires_in": None}, timeout=10)
    assert made.status_code == 201
    url = made.json()["url"]
    token = url.removeprefix("/s/")
    assert requests.get(f"{base}{url}", timeout=10).status_code == 200
    assert requests.get(f"{base}{url}?format=json", timeout=10).status_code == 200
    # From another page of the server's, and with the s or the slash percent-encoded (which the app decodes).
    assert requests.get(f"{base}/static/shared.js", headers={"Referer": f"{base}{url}"}, timeout=10).status_code == 200
    assert requests.get(f"{base}/s%2F{token}", timeout=10).status_code == 200
    raw = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)  # requests would decode the %73
    raw.request("GET", f"/%73/{token}")
    assert raw.getresponse().status == 200
    raw.close()
    shares = requests.get(f"{base}/chats/{chat_id}/shares", timeout=10).json()
    assert requests.delete(f"{base}/chats/{chat_id}/shares/{shares[0]['id']}", timeout=10).status_code == 200
    assert requests.get(f"{base}{url}", timeout=10).status_code == 404
    assert requests.get(f"{base}/chats/{chat_id}/export", timeout=10).status_code == 200  # the last request

    wait_for(lambda: f"GET /chats/{chat_id}/export" in server.output(), 10, "the access log's last line")
    log = server.output()
    assert token not in log
    assert token[:12] not in log
    # The requests were logged, the token taken out of each line.
    assert log.count('"GET /s/… HTTP/1.1" 200') == 1 and log.count('"GET /s/…?format=json HTTP/1.1" 200') == 1
    assert log.count('"GET /s/… HTTP/1.1" 404') == 1 and log.count('"GET /s%2F… HTTP/1.1" 200') == 1
    assert log.count('"GET /%73/… HTTP/1.1" 200') == 1
    assert log.count("/s/…") >= 4

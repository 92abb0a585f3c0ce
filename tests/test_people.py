"""Two people on one server (issue 22): each one's chats are theirs alone on every route (404, exactly as for a chat
that does not exist), lists and searches are private both ways, and the URL map is walked so that a route added
without the check fails; when accounts are on; sessions that end; sign-in limits and the same answer for a wrong
name or password; revoked keys and disabled people."""

import itertools
import json
import statistics
import time
import uuid
from dataclasses import dataclass

import flask
import pytest
import requests
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from chatapi import create_app, people
from chatapi.extensions import db
from chatapi.models import Chat, owned_or_404
from tests.support.chats import ENDLESS, GREEDY, QUESTION, infer
from tests.support.client import add_message, create_chat, snapshot
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.sse import EventStream

PASSWORD = "correct horse battery staple"
COOKIE = "chatapi_session"
TINY = f"max_tokens=4&{GREEDY}"
ENV_KEY = "env-key-" + uuid.uuid4().hex
CHAT_FILE = {
    "chatapi_export": 1,
    "chat": {"name": "imported", "created_at": "2023-08-05T14:48:00Z", "updated_at": "2023-08-05T14:48:00Z"},
    "conversations": [
        {
            "role": "Human",
            "message": "hello",
            "created_at": "2023-08-05T14:48:00Z",
            "updated_at": "2023-08-05T14:48:00Z",
        }
    ],
}


# Each client comes from a loopback address of its own: the wrong keys some tests send on purpose count per address
# (CHATAPI_RATE_LIMIT_AUTH_FAILURES), and must not add up to a limit in the tests after them.
ADDRESSES = (f"127.{a}.{b}.{c}" for a, b, c in itertools.product(range(10, 250), range(1, 250), range(1, 250)))


def new_client(app) -> FlaskClient:
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = next(ADDRESSES)
    return browser


@dataclass
class Someone:
    """A person made for a test: their id, a key of theirs, and a test client that sends it."""

    id: int
    name: str
    key: str
    key_id: int
    client: FlaskClient

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


def make_person(app, name: str, admin: bool = False) -> Someone:
    """A person with a password (PASSWORD) and a key, committed; their client sends the key."""
    with app.app_context():
        user = people.create_user(name, PASSWORD, admin=admin)
        key, secret = people.new_key(user, "tests")
        db.session.commit()
        someone = Someone(user.id, user.name, secret, key.id, new_client(app))
        db.session.remove()
    someone.client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    # A key's first use notes it (last_used_at, at most once a minute): done here, before any snapshot.
    assert someone.client.get("/me").json == {"id": someone.id, "name": name, "admin": admin}
    return someone


@pytest.fixture
def alice_and_bob(app, client) -> tuple[Someone, Someone]:
    return make_person(app, "alice"), make_person(app, "bob")


def chat_with_messages(someone: Someone, name: str = "Alice's secrets") -> tuple[str, str, str]:
    """A chat of the person's with a question and an answer: the chat's id, the question's and the answer's."""
    chat_id = create_chat(someone.client, name)["id"]
    question = add_message(someone.client, chat_id, QUESTION)["id"]
    answer = add_message(someone.client, chat_id, "Paris.", role="Assistant")["id"]
    return chat_id, question, answer


def without(body, *ids: str) -> str:
    """The body as text with the ids it names taken out: a 404 for another's chat and for none read the same."""
    text = json.dumps(body, sort_keys=True)
    for ident in ids:
        text = text.replace(str(ident), "<id>")
    return text


def check_same_as_missing(other, missing, other_ids: tuple, missing_ids: tuple, what: str) -> None:
    assert other.status_code == 404, (what, other.status_code, other.get_data(as_text=True))
    assert missing.status_code == 404, (what, missing.status_code, missing.get_data(as_text=True))
    assert other.headers["Content-Type"] == missing.headers["Content-Type"] == "application/json", what
    assert without(other.json, *other_ids) == without(missing.json, *missing_ids), what


def requests_naming(chat_id: str, question: str, answer: str) -> dict[str, tuple[str, str, dict]]:
    """Every request that names a chat or a message (in its path, query or body), by what it does."""
    return {
        "read": ("GET", f"/chats/{chat_id}", {}),
        "rename": ("PUT", f"/chats/update/{chat_id}", {"json": {"name": "mine now"}}),
        "delete": ("DELETE", f"/chats/delete/{chat_id}", {}),
        "list its messages": ("GET", f"/chats/{chat_id}/conversations", {}),
        "list its messages by query": ("GET", f"/conversations/?chat_id={chat_id}", {}),
        "edit (delete after)": ("DELETE", f"/chats/{chat_id}/conversations?after={question}", {}),
        "export": ("GET", f"/chats/{chat_id}/export", {}),
        "export as markdown": ("GET", f"/chats/{chat_id}/export?format=markdown", {}),
        "add a message": (
            "POST",
            "/conversations/create",
            {"json": {"chat_id": chat_id, "role": "Human", "message": "mine now"}},
        ),
        "read a message": ("GET", f"/conversations/{question}", {}),
        "edit a message": ("PUT", f"/conversations/update/{question}", {"json": {"message": "mine now"}}),
        "delete a message": ("DELETE", f"/conversations/delete/{answer}", {}),
        "start a reply": ("GET", f"/conversations/inference/{chat_id}?{TINY}", {}),
        "start an internet reply": ("GET", f"/conversations/inference_internet/{chat_id}?{TINY}", {}),
        "regenerate": ("GET", f"/conversations/inference/{chat_id}?{TINY}&replace={answer}", {}),
        "regenerate with internet": ("GET", f"/conversations/inference_internet/{chat_id}?{TINY}&replace={answer}", {}),
        "join after a message": ("GET", f"/conversations/inference/{chat_id}?{TINY}&after={question}", {}),
        "resume": (
            "GET",
            f"/conversations/inference/{chat_id}?{TINY}",
            {"headers": {"Last-Event-ID": f"{uuid.uuid4()}.3"}},
        ),
        "stop": ("POST", f"/conversations/stop/{chat_id}", {}),
    }


def test_another_persons_chat_is_404_on_every_route_exactly_as_none(app, alice_and_bob):
    alice, bob = alice_and_bob
    ids = chat_with_messages(alice)
    bob_chat = create_chat(bob.client, "Bob's")["id"]
    missing_ids = (str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()))
    before = snapshot(app)
    others, missing = requests_naming(*ids), requests_naming(*missing_ids)
    assert len(others) == 19
    for what, (method, url, kwargs) in others.items():
        m_method, m_url, m_kwargs = missing[what]
        check_same_as_missing(
            bob.client.open(url, method=method, **kwargs),
            bob.client.open(m_url, method=m_method, **m_kwargs),
            ids,
            missing_ids,
            what,
        )
    # Bob's own chat with Alice's message in the query: as for a message that does not exist.
    for query in (f"{TINY}&replace={ids[2]}", f"{TINY}&after={ids[1]}"):
        other = bob.client.get(f"/conversations/inference/{bob_chat}?{query}")
        for mine, missing_id in zip(ids, missing_ids, strict=True):
            query = query.replace(mine, missing_id)
        none = bob.client.get(f"/conversations/inference/{bob_chat}?{query}")
        assert (other.status_code, without(other.json, *ids)) == (none.status_code, without(none.json, *missing_ids))
    other = bob.client.delete(f"/chats/{bob_chat}/conversations?after={ids[1]}")
    none = bob.client.delete(f"/chats/{bob_chat}/conversations?after={missing_ids[1]}")
    check_same_as_missing(other, none, ids, missing_ids, "delete after another's message in one's own chat")

    assert snapshot(app) == before  # no rename, message, edit, deletion, reply or stop
    # Alice still reaches all of it.
    assert alice.client.get(f"/chats/{ids[0]}").status_code == 200
    assert [m["id"] for m in alice.client.get(f"/chats/{ids[0]}/conversations").json] == list(ids[1:])


def test_lists_totals_and_searches_show_only_ones_own_both_ways(app, alice_and_bob):
    alice, bob = alice_and_bob
    mine = {name: create_chat(alice.client, name)["id"] for name in ("Apple notes", "Banana bread", "Cherry")}
    theirs = {name: create_chat(bob.client, name)["id"] for name in ("apple pie", "Durian")}
    for someone, own in ((alice, mine), (bob, theirs)):
        listed = someone.client.get("/chats/")
        assert sorted(c["id"] for c in listed.json) == sorted(own.values())
        assert listed.headers["X-Total-Count"] == str(len(own))
        first = someone.client.get("/chats/?limit=1&offset=0")
        assert len(first.json) == 1 and first.headers["X-Total-Count"] == str(len(own))
        found = someone.client.get("/chats/?q=APPLE")
        assert [c["id"] for c in found.json] == [v for k, v in own.items() if "apple" in k.lower()]
        assert found.headers["X-Total-Count"] == "1"
        nothing = someone.client.get("/chats/?q=durian" if someone is alice else "/chats/?q=banana")
        assert nothing.json == [] and nothing.headers["X-Total-Count"] == "0"


def test_search_finds_only_ones_own_messages_and_names(app, alice_and_bob):
    alice, bob = alice_and_bob
    mine = create_chat(alice.client, "Zeppelin plans")["id"]
    said = add_message(alice.client, mine, "the zeppelin leaves at dawn")["id"]
    theirs = create_chat(bob.client, "Zeppelin rivals")["id"]
    add_message(bob.client, theirs, "our zeppelin is faster")
    for someone, chat, message in ((alice, mine, said), (bob, theirs, None)):
        found = someone.client.get("/search?q=zeppelin")
        assert {hit["chat_id"] for hit in found.json} == {chat}
        assert found.headers["X-Total-Count"] == str(len(found.json)) == "2"
        if message:
            assert message in {hit["conversation_id"] for hit in found.json}
    assert bob.client.get("/search?q=dawn").json == [] and alice.client.get("/search?q=faster").json == []


def test_an_admin_sees_only_their_own_chats(app, alice_and_bob):
    alice, _ = alice_and_bob
    carol = make_person(app, "carol", admin=True)
    chat_id, question, _ = chat_with_messages(alice)
    own = create_chat(carol.client, "Carol's")["id"]
    listed = carol.client.get("/chats/")
    assert [c["id"] for c in listed.json] == [own] and listed.headers["X-Total-Count"] == "1"
    assert carol.client.get(f"/chats/{chat_id}").status_code == 404
    assert carol.client.get(f"/conversations/{question}").status_code == 404
    assert carol.client.get(f"/chats/{chat_id}/export").status_code == 404
    assert carol.client.delete(f"/chats/delete/{chat_id}").status_code == 404
    # They manage people, not read them.
    assert "alice" in [user["name"] for user in carol.client.get("/users").json]
    assert [c["id"] for c in alice.client.get("/chats/").json] == [chat_id]


def test_an_import_is_a_chat_of_the_importers(app, alice_and_bob):
    alice, bob = alice_and_bob
    imported = alice.client.post("/chats/import", json=CHAT_FILE)
    assert imported.status_code == 201, imported.json
    chat_id = imported.json["id"]
    assert [c["id"] for c in alice.client.get("/chats/").json] == [chat_id]
    assert bob.client.get("/chats/").json == []
    assert bob.client.get(f"/chats/{chat_id}").status_code == 404
    with app.app_context():
        assert db.session.get(Chat, uuid.UUID(chat_id)).owner_id == alice.id
        db.session.remove()
    # Bob importing Alice's export makes a chat of Bob's; Alice's stays hers.
    exported = alice.client.get(f"/chats/{chat_id}/export").json
    again = bob.client.post("/chats/import", json=exported)
    assert again.status_code == 201
    assert [c["id"] for c in bob.client.get("/chats/").json] == [again.json["id"]]
    assert [c["id"] for c in alice.client.get("/chats/").json] == [chat_id]


# The URL map: every rule that names a chat or a message, each method, is checked with another person's ids.

ID_ARGUMENTS = frozenset({"chat_id", "conversation_id"})
# The rules that name a chat or a message today (each method counts): the walk must find at least these.
TODAY = {
    ("GET", "/chats/<chat_id>"),
    ("PUT", "/chats/update/<chat_id>"),
    ("DELETE", "/chats/delete/<chat_id>"),
    ("GET", "/chats/<chat_id>/conversations"),
    ("DELETE", "/chats/<chat_id>/conversations"),
    ("GET", "/chats/<chat_id>/export"),
    ("GET", "/conversations/<conversation_id>"),
    ("PUT", "/conversations/update/<conversation_id>"),
    ("DELETE", "/conversations/delete/<conversation_id>"),
    ("GET", "/conversations/inference/<chat_id>"),
    ("GET", "/conversations/inference_internet/<chat_id>"),
    ("POST", "/conversations/stop/<chat_id>"),
    ("POST", "/chats/<chat_id>/shares"),
    ("GET", "/chats/<chat_id>/shares"),
    ("DELETE", "/chats/<chat_id>/shares/<share_id>"),
}
# A valid request for each endpoint that needs more than its path, so that what answers is the check of whose the
# chat is, not the validation of the body. A new route that needs a body fails the walk (422) until it is added.
REQUESTS = {
    "chats.update_chat": lambda ids: {"json": {"name": "mine now"}},
    "chats.delete_conversations_after": lambda ids: {"query_string": {"after": ids["conversation_id"]}},
    "chats.export_chat": lambda ids: {"query_string": {"format": "markdown"}},
    "shares.create_share": lambda ids: {"json": {"expires_in": None}},
    "conversations.update_conversation": lambda ids: {"json": {"message": "mine now"}},
    "conversations.inference": lambda ids: {"query_string": {"max_tokens": 4, "temperature": 0}},
    "conversations.inference_internet": lambda ids: {"query_string": {"max_tokens": 4, "temperature": 0}},
}


def rules_naming_a_chat(app) -> list[tuple[str, Rule]]:
    """(method, rule) for every rule whose arguments name a chat or a message, each method but HEAD and OPTIONS."""
    pairs = [
        (method, rule)
        for rule in app.url_map.iter_rules()
        if rule.arguments & ID_ARGUMENTS
        for method in rule.methods - {"HEAD", "OPTIONS"}
    ]
    return sorted(pairs, key=lambda pair: (pair[1].rule, pair[0]))


def rule_url(app, rule: Rule, ids: dict) -> str:
    """The rule's URL with the ids for its arguments (any other argument: a placeholder)."""
    with app.test_request_context():
        return flask.url_for(rule.endpoint, **{name: ids.get(name, "x") for name in rule.arguments})


def unguarded_routes(app, as_other: FlaskClient, owners_ids: dict, missing_ids: dict) -> list[str]:
    """Walk the URL map: for every rule naming a chat or a message, each method, the other person asks for the
    owner's (ids by argument name). What does not answer a 404 like that for an id that does not exist, or changes
    a row, is reported as `METHOD /rule: why`. The app's database holds both people and the owner's rows."""
    problems = []
    for method, rule in rules_naming_a_chat(app):
        other_url, missing_url = rule_url(app, rule, owners_ids), rule_url(app, rule, missing_ids)
        extra = REQUESTS.get(rule.endpoint, lambda ids: {})
        before = snapshot(app)
        answer = as_other.open(other_url, method=method, **extra(owners_ids))
        changed = snapshot(app) != before
        none = as_other.open(missing_url, method=method, **extra(missing_ids))
        name = f"{method} {rule.rule}"
        if answer.status_code != 404:
            problems.append(f"{name}: answered {answer.status_code}, not 404")
        elif none.status_code != 404 or without(answer.get_json(silent=True), *owners_ids.values()) != without(
            none.get_json(silent=True), *missing_ids.values()
        ):
            problems.append(f"{name}: its 404 differs from one for an id that does not exist")
        if changed:
            problems.append(f"{name}: changed the database")
    return problems


def owners_ids(someone: Someone) -> tuple[dict, dict]:
    chat_id, question, _ = chat_with_messages(someone)
    owner = {"chat_id": chat_id, "conversation_id": question}
    return owner, {"chat_id": str(uuid.uuid4()), "conversation_id": str(uuid.uuid4())}


def test_every_rule_naming_a_chat_or_message_is_404_for_another_person(app, alice_and_bob):
    alice, bob = alice_and_bob
    walked = {(method, rule.rule) for method, rule in rules_naming_a_chat(app)}
    # Fewer than today's would mean the walk no longer finds them: it must not pass by checking nothing.
    assert walked >= TODAY, f"the walk missed {sorted(TODAY - walked)}"
    owner, missing = owners_ids(alice)
    assert unguarded_routes(app, bob.client, owner, missing) == []


@pytest.fixture
def leaky_app(app, database_url):
    """Another app on the same database, with two throwaway routes: one that forgets whose the chat is, and one
    that asks."""
    other = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    leaky = flask.Blueprint("leaky", __name__)

    @leaky.route("/leaky/<chat_id>", methods=["GET", "POST"])
    def forgetful(chat_id):
        chat = db.session.get(Chat, uuid.UUID(chat_id))
        if chat is None:
            flask.abort(404)
        return {"name": chat.name}

    @leaky.route("/leaky/<chat_id>/checked", methods=["GET"])
    def checked(chat_id):
        return {"name": owned_or_404(Chat, chat_id).name}

    other.register_blueprint(leaky)
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def test_the_walk_reports_a_route_added_without_the_check(app, leaky_app, alice_and_bob):
    """Guards the test above: a new route that reads a chat without asking whose it is must be reported."""
    alice, bob = alice_and_bob
    other_bob = new_client(leaky_app)
    other_bob.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {bob.key}"
    owner, missing = owners_ids(alice)
    problems = unguarded_routes(leaky_app, other_bob, owner, missing)
    assert sorted(problems) == [
        "GET /leaky/<chat_id>: answered 200, not 404",
        "POST /leaky/<chat_id>: answered 200, not 404",
    ]


# When accounts are on.


def test_a_fresh_box_with_nobody_serves_openly(client):
    chat = create_chat(client, "open")
    assert add_message(client, chat["id"], QUESTION)["chat_id"] == chat["id"]
    assert client.get("/chats/").headers["X-Total-Count"] == "1"
    assert client.get("/me").status_code == 404  # nobody to be


def test_once_a_person_exists_every_request_needs_a_key_or_a_session(app, client):
    chat_id = create_chat(client, "made openly")["id"]
    message_id = add_message(client, chat_id, QUESTION)["id"]
    make_person(app, "alice")
    stranger = new_client(app)
    for what, (method, url, kwargs) in requests_naming(chat_id, message_id, message_id).items():
        answer = stranger.open(url, method=method, **kwargs)
        assert answer.status_code == 401, (what, answer.json)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    for method, url in (
        ("GET", "/chats/"),
        ("POST", "/chats/create"),
        ("POST", "/chats/import"),
        ("GET", "/me"),
        ("GET", "/me/keys"),
        ("GET", "/users"),
        ("POST", "/users"),
    ):
        assert stranger.open(url, method=method, json={}).status_code == 401, url
    for url in ("/", "/openapi.json", "/docs", "/static/main.js"):
        assert stranger.get(url).status_code == 200, url
    assert stranger.get("/health").status_code in (200, 503)


def test_env_keys_act_as_the_admin_named_admin(app, client, database_url):
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url}
    keyed = create_app({**config, "CHATAPI_API_KEYS": (ENV_KEY,)})
    create_app(config)  # every app shares one API document, the last app's: the open server's for the next tests
    try:
        as_admin = new_client(keyed)
        as_admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ENV_KEY}"
        me = as_admin.get("/me")
        assert me.status_code == 200 and me.json["name"] == "admin" and me.json["admin"] is True
        with app.app_context():
            admin = people.find_user("admin")
            assert admin is not None and admin.admin and admin.id == me.json["id"]
            assert admin.password_hash is None  # signs in with the keys only
            db.session.remove()
        chat_id = create_chat(as_admin, "the admin's")["id"]
        # The admin made by the keys manages people, and their chats are theirs alone.
        made = as_admin.post("/users", json={"name": "alice", "password": PASSWORD, "admin": False})
        assert made.status_code == 201, made.json
        signed_in = new_client(app)
        assert signed_in.post("/session", json={"name": "alice", "password": PASSWORD}).status_code == 204
        assert signed_in.get("/me").json["name"] == "alice"
        assert signed_in.get(f"/chats/{chat_id}").status_code == 404
        assert signed_in.get("/chats/").json == []
        assert [c["id"] for c in as_admin.get("/chats/").json] == [chat_id]
    finally:
        with keyed.app_context():
            db.session.remove()
            db.engine.dispose()


# The accounts API (point 3): admins manage people.


def test_the_first_person_can_be_made_over_the_api_then_only_admins_manage_people(app, client):
    made = client.post("/users", json={"name": "Root", "password": PASSWORD, "admin": True})
    assert made.status_code == 201, made.json
    assert made.json["name"] == "root" and made.json["admin"] is True and made.json["disabled_at"] is None
    assert made.headers["Location"].endswith(f"/users/{made.json['id']}")
    # Accounts are on now: the same request needs an admin.
    assert new_client(app).post("/users", json={"name": "eve", "password": PASSWORD}).status_code == 401
    root = sign_in(app, "root")
    for bad in ({"name": "-bad", "password": PASSWORD}, {"name": "ok", "password": "short"}, {"name": "ok"}):
        assert root.post("/users", json=bad).status_code == 422, bad
    alice = root.post("/users", json={"name": "alice", "password": PASSWORD})
    assert alice.status_code == 201 and alice.json["admin"] is False
    assert root.post("/users", json={"name": "ALICE", "password": PASSWORD}).status_code == 409  # taken
    assert [u["name"] for u in root.get("/users").json] == ["alice", "root"]
    assert root.get(f"/users/{alice.json['id']}").json["name"] == "alice"
    assert root.put("/users/999999", json={"disabled": True}).status_code == 404

    as_alice = sign_in(app, "alice")
    for method, url in (
        ("GET", "/users"),
        ("POST", "/users"),
        ("GET", f"/users/{made.json['id']}"),
        ("PUT", f"/users/{made.json['id']}"),
        ("DELETE", f"/users/{made.json['id']}"),
    ):
        answer = as_alice.open(url, method=method, json={"name": "x", "password": PASSWORD, "disabled": True})
        assert answer.status_code == 403, (method, url, answer.json)
    assert [u["name"] for u in root.get("/users").json] == ["alice", "root"]

    # The last active admin can be neither demoted, disabled nor deleted.
    root_id = made.json["id"]
    for method, body in (("PUT", {"admin": False}), ("PUT", {"disabled": True}), ("DELETE", None)):
        assert root.open(f"/users/{root_id}", method=method, json=body).status_code == 409, (method, body)
    promoted = root.put(f"/users/{alice.json['id']}", json={"admin": True})
    assert promoted.status_code == 200 and promoted.json["admin"] is True
    assert as_alice.get("/me").json["admin"] is True  # at once
    assert root.put(f"/users/{root_id}", json={"admin": False}).json["admin"] is False


def test_a_name_taken_by_a_request_at_the_same_moment_is_a_409(app, alice_and_bob, monkeypatch):
    alice, _ = alice_and_bob
    with app.app_context():
        people.create_user("admin-alice", PASSWORD, admin=True)
        db.session.commit()
        db.session.remove()
    admin = sign_in(app, "admin-alice")
    monkeypatch.setattr(people, "find_user", lambda name: None)  # the check passes, as for a request in a race
    answer = admin.post("/users", json={"name": "bob", "password": PASSWORD})
    assert answer.status_code == 409 and "taken" in answer.json["message"], answer.json


def test_the_metrics_count_tokens_by_person_so_only_admins_read_them(app, alice_and_bob):
    alice, bob = alice_and_bob
    assert bob.client.get("/metrics").status_code == 403
    with app.app_context():
        people.create_user("carol", PASSWORD, admin=True)
        db.session.commit()
        db.session.remove()
    assert sign_in(app, "carol").get("/metrics").status_code == 200


def test_a_database_that_cannot_say_whether_anyone_exists_serves_nothing_openly(
    app, alice_and_bob, database_url, monkeypatch
):
    """A process that has not read "nobody" from the database must not serve chats openly when the question fails:
    a 503, never alice's chats."""
    alice, _ = alice_and_bob
    chat_with_messages(alice)
    fresh = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})  # another process, as it were

    def locked() -> bool:
        raise sa.exc.OperationalError("SELECT EXISTS ...", {}, Exception("database is locked"))

    with monkeypatch.context() as patched:
        patched.setattr(people, "people_exist", locked)
        for url in ("/chats/", "/conversations/?chat_id=" + str(uuid.uuid4())):
            assert new_client(fresh).get(url).status_code == 503
    assert new_client(fresh).get("/chats/").status_code == 401
    with fresh.app_context():
        db.session.remove()
        db.engine.dispose()


def test_deleting_a_person_deletes_their_chats_keys_and_sessions(app, alice_and_bob):
    alice, bob = alice_and_bob
    carol = make_person(app, "carol", admin=True)
    browser = sign_in(app, "alice")
    chat_id, question, _ = chat_with_messages(alice)
    bobs = create_chat(bob.client, "Bob's")["id"]
    deleted = carol.client.delete(f"/users/{alice.id}")
    assert deleted.status_code == 200 and deleted.json == {"id": alice.id, "deleted": True}
    assert alice.client.get("/chats/").status_code == 401 and browser.get("/chats/").status_code == 401
    with app.app_context():
        assert db.session.scalars(sa.select(Chat.id)).all() == [uuid.UUID(bobs)]
        assert db.session.scalar(sa.select(sa.func.count()).select_from(people.ApiKey)) == 2  # bob's, carol's
        assert people.find_user("alice") is None
        db.session.remove()
    assert carol.client.delete(f"/users/{alice.id}").status_code == 404
    assert [c["id"] for c in bob.client.get("/chats/").json] == [bobs]


# Sessions that end; keys that stop.


def sign_in(app, name: str, password: str = PASSWORD) -> FlaskClient:
    """A new client (a browser) signed in with name and password: it holds the session cookie."""
    browser = new_client(app)
    answer = browser.post("/session", json={"name": name, "password": password})
    assert answer.status_code == 204, answer.get_data(as_text=True)
    assert browser.get_cookie(COOKIE) is not None
    return browser


def copy_of(app, browser: FlaskClient) -> FlaskClient:
    """Another client with the same cookie: a stolen or copied one, that a sign-out in the browser does not clear."""
    copy = new_client(app)
    copy.set_cookie(COOKIE, browser.get_cookie(COOKIE).value)
    return copy


def test_a_copy_of_the_cookie_stops_working_after_sign_out(app, alice_and_bob):
    browser = sign_in(app, "alice")
    copy = copy_of(app, browser)
    assert copy.get("/chats/").status_code == 200
    value = browser.get_cookie(COOKIE).value
    assert "alice" not in value and len(value) >= 32  # a random token, no name nor key id
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(people.SignIn)) == 1
        db.session.remove()
    assert browser.delete("/session").status_code == 204
    assert browser.get_cookie(COOKIE) is None
    answer = copy.get("/chats/")
    assert answer.status_code == 401 and "Set-Cookie" not in answer.headers
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(people.SignIn)) == 0
        db.session.remove()


def test_a_sign_in_by_name_is_case_blind_and_its_cookie_is_httponly_strict_and_expires(app, alice_and_bob):
    browser = new_client(app)
    answer = browser.post("/session", json={"name": " Alice ", "password": PASSWORD})
    assert answer.status_code == 204 and answer.data == b""
    cookie = answer.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={7 * 24 * 3600}"):
        assert attribute in cookie, (attribute, cookie)
    assert browser.get("/me").json["name"] == "alice"
    assert new_client(app).post("/session", json={"name": "alice", "password": PASSWORD.upper()}).status_code == 401


def test_a_person_keeps_their_newest_sessions_only(app, alice_and_bob):
    browsers = [sign_in(app, "alice") for _ in range(people.MAX_SESSIONS + 1)]
    assert browsers[0].get("/chats/").status_code == 401  # the oldest ended
    assert all(browser.get("/chats/").status_code == 200 for browser in browsers[1:])
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(people.SignIn)) == people.MAX_SESSIONS
        db.session.remove()


def test_a_password_change_ends_every_session_of_the_person(app, alice_and_bob):
    alice, bob = alice_and_bob
    browser, elsewhere, bobs = sign_in(app, "alice"), sign_in(app, "alice"), sign_in(app, "bob")
    copy = copy_of(app, browser)
    wrong = browser.put("/me/password", json={"current_password": "not " + PASSWORD, "password": "a new password"})
    assert wrong.status_code in (401, 403, 422) and copy.get("/chats/").status_code == 200
    changed = browser.put("/me/password", json={"current_password": PASSWORD, "password": "a new password"})
    assert changed.status_code == 204, changed.get_data(as_text=True)
    assert browser.get("/chats/").status_code == 200  # the caller got a new cookie
    assert copy.get("/chats/").status_code == 401
    assert elsewhere.get("/chats/").status_code == 401
    assert bobs.get("/chats/").status_code == 200  # another person's sessions stay
    assert new_client(app).post("/session", json={"name": "alice", "password": PASSWORD}).status_code == 401
    sign_in(app, "alice", "a new password")


def test_a_password_reset_by_an_admin_ends_the_persons_sessions(app, alice_and_bob):
    carol = make_person(app, "carol", admin=True)
    browser = sign_in(app, "bob")
    reset = carol.client.put(f"/users/{alice_and_bob[1].id}", json={"password": "a new password"})
    assert reset.status_code == 200
    assert browser.get("/chats/").status_code == 401
    sign_in(app, "bob", "a new password")


def test_a_disabled_person_can_do_nothing_with_a_session_or_a_key(app, alice_and_bob):
    alice, bob = alice_and_bob
    carol = make_person(app, "carol", admin=True)
    browser = sign_in(app, "bob")
    chat_id = create_chat(bob.client, "Bob's")["id"]
    assert bob.client.get("/users").status_code == 403  # not an admin
    disabled = carol.client.put(f"/users/{bob.id}", json={"disabled": True})
    assert disabled.status_code == 200 and disabled.json["disabled_at"] is not None
    assert browser.get("/chats/").status_code == 401
    assert bob.client.get("/chats/").status_code == 401
    assert bob.client.get(f"/chats/{chat_id}").status_code == 401
    refused = new_client(app).post("/session", json={"name": "bob", "password": PASSWORD})
    wrong = new_client(app).post("/session", json={"name": "alice", "password": "not " + PASSWORD})
    assert (refused.status_code, refused.json) == (wrong.status_code, wrong.json) == (401, wrong.json)
    assert new_client(app).post("/session", json={"key": bob.key}).status_code == 401
    assert alice.client.get("/chats/").status_code == 200
    # Enabled again, the person signs in again; the sessions that ended stay ended.
    assert carol.client.put(f"/users/{bob.id}", json={"disabled": False}).json["disabled_at"] is None
    assert browser.get("/chats/").status_code == 401
    sign_in(app, "bob")


def test_a_revoked_key_and_the_sessions_it_opened_stop_at_once(app, alice_and_bob):
    alice, bob = alice_and_bob
    browser = new_client(app)
    assert browser.post("/session", json={"key": bob.key}).status_code == 204
    assert browser.get("/me").json["name"] == "bob"
    signed_in = sign_in(app, "bob")  # with the password: not opened with the key
    made = bob.client.post("/me/keys", json={"label": "spare"})
    assert made.status_code == 201 and made.json["key"].startswith("chatapi-")
    spare = {"Authorization": f"Bearer {made.json['key']}"}
    assert new_client(app).get("/chats/", headers=spare).status_code == 200
    listed = bob.client.get("/me/keys").json
    assert sorted(k["id"] for k in listed) == sorted([bob.key_id, made.json["id"]])
    assert all("key" not in k for k in listed)
    # Alice cannot revoke Bob's key: as for a key that does not exist.
    assert alice.client.delete(f"/me/keys/{bob.key_id}").status_code == 404
    assert bob.client.get("/chats/").status_code == 200

    revoked = signed_in.delete(f"/me/keys/{bob.key_id}")
    assert revoked.status_code == 200 and revoked.json == {"id": bob.key_id, "revoked": True}
    answer = bob.client.get("/chats/")
    unknown = new_client(app).get("/chats/", headers={"Authorization": "Bearer chatapi-" + uuid.uuid4().hex})
    assert (answer.status_code, answer.json) == (401, unknown.json)  # revoked reads as never made
    assert browser.get("/chats/").status_code == 401  # opened with that key
    assert signed_in.get("/chats/").status_code == 200
    assert new_client(app).get("/chats/", headers=spare).status_code == 200


def test_a_password_change_keeps_the_sessions_key_so_revoking_the_key_still_ends_it(app, alice_and_bob):
    _, bob = alice_and_bob
    browser = new_client(app)
    assert browser.post("/session", json={"key": bob.key}).status_code == 204
    changed = browser.put("/me/password", json={"current_password": PASSWORD, "password": "a new password"})
    assert changed.status_code == 204 and COOKIE in changed.headers["Set-Cookie"]  # a new session, for this page
    assert browser.get("/me").status_code == 200
    assert bob.client.delete(f"/me/keys/{bob.key_id}").status_code == 200
    assert browser.get("/me").status_code == 401  # opened with the key, it went with it


def test_v1_refuses_a_revoked_key_and_no_key_in_openais_shape(app, alice_and_bob):
    alice, bob = alice_and_bob
    with app.app_context():
        people.revoke_key(db.session.get(people.ApiKey, bob.key_id))
        db.session.commit()
        db.session.remove()
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
    for client in (bob.client, new_client(app)):
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 401, answer.json
        assert answer.json["error"]["type"] == "authentication_error", answer.json
    assert alice.client.get("/v1/models").status_code in (200, 503)  # her key passes (the model may be loading)


# Sign-in: limited per name and per client, and the same answer for a wrong name and a wrong password.


@pytest.fixture
def limited_app(app, client, database_url):
    """An app of its own (its own counts) that allows 3 failed sign-ins a minute."""
    limited = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_RATE_LIMIT_AUTH_FAILURES": "3/minute"}
    )
    yield limited
    with limited.app_context():
        db.session.remove()
        db.engine.dispose()


def attempt(app, name: str, password: str, address: str | None = None):
    """A sign-in from the address (else one of its own)."""
    browser = new_client(app)
    if address:
        browser.environ_base["REMOTE_ADDR"] = address
    return browser.post("/session", json={"name": name, "password": password})


def test_sign_in_is_limited_per_client_address(limited_app, alice_and_bob):
    for name in ("nobody", "alice", "carol"):
        assert attempt(limited_app, name, "wrong password", "127.5.0.1").status_code == 401
    refused = attempt(limited_app, "bob", PASSWORD, "127.5.0.1")  # the right one, but too late from there
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert attempt(limited_app, "bob", PASSWORD, "127.5.0.2").status_code == 204


def test_sign_in_is_limited_per_name(limited_app, alice_and_bob):
    for i in range(3):  # from addresses of their own: a guesser with many
        assert attempt(limited_app, "alice", f"wrong password {i}", None).status_code == 401
    refused = attempt(limited_app, "alice", PASSWORD, "127.5.1.9")
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert attempt(limited_app, "bob", PASSWORD, "127.5.1.9").status_code == 204  # another name from there


def test_guessing_the_current_password_with_a_session_is_limited_too(limited_app, alice_and_bob):
    """A copied cookie must not be a way to guess the password (to sign in elsewhere, or change it) at the
    server's speed: PUT /me/password's check counts as a wrong password does at sign-in."""
    browser = sign_in(limited_app, "alice")
    answers = [
        browser.put("/me/password", json={"current_password": f"guess {i}", "password": "a new password"}).status_code
        for i in range(4)
    ]
    assert answers == [403, 403, 403, 429], answers


def test_guesses_sent_at_once_are_limited_as_guesses_sent_one_by_one(limited_app, alice_and_bob):
    """argon2 takes long enough that guesses in flight together would all pass a limit counted after each: ten at
    once from one address get three answers (the limit) and seven 429s, and alice's password was tried 3 times."""
    import gevent  # noqa: PLC0415 (the server's own concurrency, here in one process)

    def guess(i: int) -> int:
        return attempt(limited_app, "alice", f"wrong password {i}", "127.5.2.1").status_code

    guesses = [gevent.spawn(guess, i) for i in range(10)]
    gevent.joinall(guesses, raise_error=True)
    assert sorted(g.value for g in guesses) == [401] * 3 + [429] * 7


def test_a_wrong_name_and_a_wrong_password_get_the_same_answer_in_the_same_time(app, alice_and_bob):
    def timed(name: str, i: int):
        started = time.perf_counter()
        answer = attempt(app, name, "wrong password")
        return answer, time.perf_counter() - started

    # Each from an address of its own, and few per name: no limit is reached.
    wrong_name = [timed(f"nobody{i}", i) for i in range(5)]
    wrong_password = [timed("alice", 10 + i) for i in range(3)] + [timed("bob", 20 + i) for i in range(2)]
    bodies = {(a.status_code, json.dumps(a.json, sort_keys=True)) for a, _ in wrong_name + wrong_password}
    assert len(bodies) == 1 and next(iter(bodies))[0] == 401, bodies
    assert all(COOKIE not in a.headers.get("Set-Cookie", "") for a, _ in wrong_name + wrong_password)
    name_time = statistics.median(t for _, t in wrong_name)
    password_time = statistics.median(t for _, t in wrong_password)
    assert 1 / 3 < name_time / password_time < 3, (name_time, password_time)


# The streams and /v1 on a real server: what the test client would hide (a running reply, a stored exchange).


@pytest.fixture(scope="module")
def people_server(app, database_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("people") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_OPENAI_STORE="1", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


def live_chat(base: str, someone: Someone, *messages: str) -> tuple[str, list[str]]:
    chat = requests.post(f"{base}/chats/create", json={"name": "live"}, headers=someone.headers, timeout=10)
    assert chat.status_code == 201, chat.text
    ids = []
    for i, message in enumerate(messages):
        body = {"chat_id": chat.json()["id"], "role": ("Human", "Assistant")[i % 2], "message": message}
        made = requests.post(f"{base}/conversations/create", json=body, headers=someone.headers, timeout=10)
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    return chat.json()["id"], ids


def test_another_persons_running_reply_cannot_be_joined_resumed_or_stopped(people_server, app, alice_and_bob):
    base = people_server
    alice, bob = alice_and_bob
    chat_id, message_ids = live_chat(base, alice, *ENDLESS)
    stream = EventStream(infer(base, chat_id, f"max_tokens=400&{GREEDY}"), headers=alice.headers)
    assert stream.response.status_code == 200, stream.response.text
    events = iter(stream)
    head = [next(events) for _ in range(4)]
    last_id = head[-1]["id"]
    assert last_id is not None
    missing = str(uuid.uuid4())
    for route in ("inference", "inference_internet"):
        for query, headers in (
            (TINY, {}),  # join the running reply
            (TINY, {"Last-Event-ID": last_id}),  # resume it
            (f"{TINY}&after={message_ids[-1]}", {}),  # a reloaded page's join
            (f"{TINY}&replace={message_ids[-2]}", {}),
        ):
            other = requests.get(infer(base, chat_id, query, route), headers={**bob.headers, **headers}, timeout=10)
            none = requests.get(infer(base, missing, query, route), headers={**bob.headers, **headers}, timeout=10)
            assert other.status_code == none.status_code == 404, (route, query, headers, other.text)
            assert without(other.json(), chat_id) == without(none.json(), missing)
            assert "text/event-stream" not in other.headers["Content-Type"]
    stopped = requests.post(f"{base}/conversations/stop/{chat_id}", headers=bob.headers, timeout=10)
    assert stopped.status_code == 404
    # Alice's reply ran on all along: she resumes it, stops it, and it ends as hers.
    resumed = EventStream(infer(base, chat_id, f"max_tokens=400&{GREEDY}"), last_id, headers=alice.headers)
    assert resumed.response.status_code == 200
    resumed.close()
    mine = requests.post(f"{base}/conversations/stop/{chat_id}", headers=alice.headers, timeout=10)
    assert mine.status_code == 200 and mine.json()["stopped"] is True
    rest = list(events)
    assert rest[-1]["event"] == "done", rest[-1]
    history = requests.get(f"{base}/chats/{chat_id}/conversations", headers=alice.headers, timeout=10).json()
    assert len(history) == len(ENDLESS) + 1 and history[-1]["role"] == "Assistant"
    assert requests.get(f"{base}/chats/", headers=bob.headers, timeout=10).json() == []


def completion(base: str, someone: Someone, messages: list[dict], stream: bool = False) -> str:
    body = {"model": "gemma-3-270m", "messages": messages, "max_tokens": 4, "temperature": 0, "stream": stream}
    answer = requests.post(f"{base}/v1/chat/completions", json=body, headers=someone.headers, timeout=120)
    assert answer.status_code == 200, answer.text
    if not stream:
        return answer.json()["choices"][0]["message"]["content"]
    chunks = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    return "".join(json.loads(chunk)["choices"][0]["delta"].get("content") or "" for chunk in chunks)


def chats_of(base: str, someone: Someone) -> list[dict]:
    return requests.get(f"{base}/chats/", headers=someone.headers, timeout=10).json()


def messages_of(base: str, someone: Someone, chat_id: str) -> list[tuple[str, str]]:
    history = requests.get(f"{base}/chats/{chat_id}/conversations", headers=someone.headers, timeout=10).json()
    return [(m["role"], m["message"]) for m in history]


def test_v1_stores_the_exchange_as_the_callers_chat_and_never_continues_anothers(people_server, app, alice_and_bob):
    base = people_server
    alice, bob = alice_and_bob
    first = [{"role": "user", "content": QUESTION}]
    answer = completion(base, alice, first)
    (stored,) = chats_of(base, alice)
    assert stored["name"] == QUESTION and chats_of(base, bob) == []
    assert messages_of(base, alice, stored["id"]) == [("Human", QUESTION), ("Assistant", answer.strip())]

    # Bob sends the same conversation on, as if it were his: a chat of his own, Alice's untouched.
    follow_up = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    completion(base, bob, follow_up)
    (bobs,) = chats_of(base, bob)
    assert bobs["id"] != stored["id"] and len(messages_of(base, bob, bobs["id"])) == 4
    assert len(messages_of(base, alice, stored["id"])) == 2
    # A streamed exchange is stored as the caller's too.
    completion(base, bob, [{"role": "user", "content": "Name a colour."}], stream=True)
    deadline = time.monotonic() + 30
    while len(chats_of(base, bob)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(chats_of(base, bob)) == 2 and [c["id"] for c in chats_of(base, alice)] == [stored["id"]]
    with app.app_context():
        owners = db.session.execute(sa.select(Chat.owner_id, sa.func.count()).group_by(Chat.owner_id)).all()
        assert sorted(owners) == sorted([(alice.id, 1), (bob.id, 2)])
        db.session.remove()

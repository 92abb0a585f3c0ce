"""Bad input: a clear JSON error, the right status, and nothing changed in the database."""

import json
import time
import uuid
from functools import partial

import pytest

from chatapi import create_app
from chatapi.llm.engine import Result
from chatapi.llm.reply import Reply, ReplyRequest
from chatapi.replies import save_reply
from tests.support.client import add_message, create_chat, snapshot

UNKNOWN = str(uuid.uuid4())


def assert_error(response, code: int, field: str | None = None) -> dict:
    assert response.status_code == code, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    body = response.json
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    if field:
        assert field in body["errors"], body
        assert all(isinstance(m, str) for m in body["errors"][field])
        assert field in body["message"]
    return body


@pytest.fixture
def seeded(client):
    """A chat with one message, so that bad requests have something to damage."""
    chat = create_chat(client)
    message = add_message(client, chat["id"], "hello")
    return {"chat": chat["id"], "message": message["id"]}


CHAT_BODIES = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": 42}, "name"),
    ({"name": None}, "name"),
    ({"name": ["a"]}, "name"),
    # Found by fuzzing: PostgreSQL's text takes no NUL, and a lone surrogate is no UTF-8 for either database.
    ({"name": "a\x00b"}, "name"),
    ({"name": "a\ud800b"}, "name"),
]


# A system prompt is checked as a message is (null or blank are fine: they clear it).
SYSTEM_PROMPT_BODIES = [
    ({"name": "ok", "system_prompt": "x" * 65537}, "system_prompt"),
    ({"name": "ok", "system_prompt": 7}, "system_prompt"),
    ({"name": "ok", "system_prompt": ["a"]}, "system_prompt"),
    ({"name": "ok", "system_prompt": "nul \x00"}, "system_prompt"),
    ({"name": "ok", "system_prompt": "surrogate \udfff"}, "system_prompt"),
    ({"system_prompt": "x" * 65537}, "system_prompt"),
    ({"name": "", "system_prompt": "fine"}, "name"),
]


@pytest.mark.parametrize(("body", "field"), CHAT_BODIES + SYSTEM_PROMPT_BODIES[:5])
def test_create_chat_rejects(app, client, seeded, body, field):
    before = snapshot(app)
    assert_error(client.post("/chats/create", json=body), 422, field)
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("body", "field"),
    CHAT_BODIES
    + SYSTEM_PROMPT_BODIES
    + [
        ({"name": "ok", "updated_at": "yesterday"}, "updated_at"),
        ({"name": "ok", "updated_at": "2023-13-05T14:48:00Z"}, "updated_at"),
        ({"name": "ok", "updated_at": 1691246880}, "updated_at"),
        ({"name": "ok", "updated_at": "0001-01-01T00:00:00+05:00"}, "updated_at"),
    ],
)
def test_update_chat_rejects(app, client, seeded, body, field):
    before = snapshot(app)
    assert_error(client.put(f"/chats/update/{seeded['chat']}", json=body), 422, field)
    assert snapshot(app) == before


def conversation_bodies(chat_id: str):
    good = {"chat_id": chat_id, "role": "Human", "message": "hi"}
    return [
        ({k: v for k, v in good.items() if k != "role"}, "role", 422),
        (dict(good, role="human"), "role", 422),
        (dict(good, role="System"), "role", 422),
        (dict(good, message=""), "message", 422),
        (dict(good, message=" \n "), "message", 422),
        (dict(good, message=7), "message", 422),
        (dict(good, message="x" * 65537), "message", 422),
        (dict(good, message="nul \x00"), "message", 422),
        (dict(good, message="surrogate \udfff"), "message", 422),
        ({k: v for k, v in good.items() if k != "chat_id"}, "chat_id", 422),
        (dict(good, chat_id="not-a-uuid"), "chat_id", 422),
        (dict(good, chat_id=UNKNOWN), None, 404),
    ]


@pytest.mark.parametrize("case", range(12))
def test_create_conversation_rejects(app, client, seeded, case):
    body, field, code = conversation_bodies(seeded["chat"])[case]
    before = snapshot(app)
    assert_error(client.post("/conversations/create", json=body), code, field)
    assert snapshot(app) == before


@pytest.mark.parametrize(
    "body", [{}, {"message": ""}, {"message": 3}, {"message": "x" * 65537}, {"message": "\x00"}, {"message": "\ud83d"}]
)
def test_update_conversation_rejects(app, client, seeded, body):
    before = snapshot(app)
    assert_error(client.put(f"/conversations/update/{seeded['message']}", json=body), 422, "message")
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/chats/create"),
        ("put", "/chats/update/{chat}"),
        ("post", "/conversations/create"),
        ("put", "/conversations/update/{message}"),
        ("post", "/chats/import"),
    ],
)
@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        "{'name': 'single quotes'}",
        '["a", "list"]',
        '"a string"',
        "\xff\xfe",
        # Found by hand while fuzzing: nesting deeper than Python's parser goes was a 500 (RecursionError).
        "[" * 100_000,
        '{"name": ' + "[" * 50_000 + "]" * 50_000 + "}",
    ],
)
def test_body_that_is_not_a_json_object_is_400(app, client, seeded, method, path, data):
    before = snapshot(app)
    response = getattr(client, method)(path.format(**seeded), data=data, content_type="application/json")
    assert_error(response, 400)
    assert snapshot(app) == before


def format_ids(value, ids: dict):
    return value.format(**ids) if isinstance(value, str) else value


def padded_to(limit: int, body: dict) -> str:
    """The body, valid but for its size: an ignored field makes it one byte over the limit."""
    text = json.dumps(dict(body, padding=""))
    return text.replace('"padding": ""', '"padding": "' + "x" * (limit + 1 - len(text)) + '"')


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/chats/create", {"name": "big"}),
        ("put", "/chats/update/{chat}", {"name": "big"}),
        ("post", "/conversations/create", {"chat_id": "{chat}", "role": "Human", "message": "big"}),
        ("put", "/conversations/update/{message}", {"message": "big"}),
        ("post", "/chats/import", {"chatapi_export": 1, "chat": {}, "conversations": []}),
    ],
)
def test_oversized_body_is_413(app, client, seeded, method, path, body):
    """Every route that takes a body refuses one over CHATAPI_MAX_BODY_BYTES, though it is valid otherwise."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    data = padded_to(limit, {name: format_ids(value, seeded) for name, value in body.items()})
    assert len(data.encode()) == limit + 1
    before = snapshot(app)
    assert_error(getattr(client, method)(path.format(**seeded), data=data, content_type="application/json"), 413)
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/chats/{id}"),
        ("delete", "/chats/delete/{id}"),
        ("put", "/chats/update/{id}"),
        ("get", "/chats/{id}/conversations"),
        ("get", "/conversations/{id}"),
        ("put", "/conversations/update/{id}"),
        ("delete", "/conversations/delete/{id}"),
        ("delete", "/chats/{id}/conversations?after=" + UNKNOWN),
        ("get", "/chats/{id}/export"),
        ("get", "/chats/{id}/export?format=markdown"),
    ],
)
@pytest.mark.parametrize("ident", [UNKNOWN, "not-a-uuid", "123", "3fa85f64-5717-4562-b3fc-2c963f66afa6x"])
def test_unknown_or_malformed_id_is_404(app, client, seeded, method, path, ident):
    before = snapshot(app)
    body = {"name": "x", "message": "x"}
    body = assert_error(getattr(client, method)(path.format(id=ident), json=body), 404)
    assert ident in body["message"]
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("offset=-1", "offset"),
        ("q=" + "x" * 201, "q"),
        ("q=a%00b", "q"),
    ],
)
def test_bad_list_query_is_422(client, query, field):
    assert_error(client.get(f"/chats/?{query}"), 422, field)


def test_conversation_list_of_unknown_chat_is_404(client):
    assert UNKNOWN in assert_error(client.get(f"/conversations/?chat_id={UNKNOWN}"), 404)["message"]


@pytest.mark.parametrize("query", ["", "chat_id=nope"])
def test_conversation_list_needs_a_valid_chat_id(client, query):
    assert_error(client.get(f"/conversations/?{query}"), 422, "chat_id")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("post", "/chats/", "GET"),
        ("delete", "/chats/{chat}", "GET"),
        ("get", "/chats/delete/{chat}", "DELETE"),
        ("patch", "/chats/update/{chat}", "PUT"),
        ("get", "/conversations/delete/{message}", "DELETE"),
        ("post", "/health", "GET"),
        ("post", "/conversations/inference/{chat}", "GET"),
        ("delete", "/conversations/inference/{chat}", "GET"),
        ("post", "/conversations/inference_internet/{chat}", "GET"),
        ("put", "/conversations/inference_internet/{chat}", "GET"),
        ("get", "/conversations/stop/{chat}", "POST"),
        ("delete", "/conversations/stop/{chat}", "POST"),
    ],
)
def test_wrong_method_is_405_json(app, client, seeded, method, path, allowed):
    before = snapshot(app)
    response = getattr(client, method)(path.format(**seeded))
    assert_error(response, 405)
    assert allowed in response.headers["Allow"].split(", ")
    assert method.upper() not in response.headers["Allow"].split(", ")
    assert snapshot(app) == before


def test_unknown_route_is_404_json(client):
    assert_error(client.get("/nowhere"), 404)


def test_database_down_is_503_json_not_500():
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    client = app.test_client()
    assert_error(client.get("/chats/"), 503)
    assert assert_error(client.post("/chats/create", json={"name": "x"}), 503)["message"] == (
        "the database is unavailable"  # the driver's words (the server's address) are for the log
    )
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json["status"] == "unavailable" and health.json["database"] == "error"
    # A process that has never read the database cannot tell whether accounts are on (a person may exist): it
    # answers as to a stranger. One that read "nobody" before it went down tells why (tests/test_postgres_down.py).
    assert "reason" not in health.json


def test_a_save_that_fails_ends_the_reply_with_a_short_error_and_logs_the_sql(app, client, caplog):
    """The database's words (SQL, parameters, the message text) go to the log, never into the stream."""
    chat = create_chat(client)
    human = add_message(client, chat["id"], "hello")
    service = app.extensions["replies"]
    request = ReplyRequest(uuid.UUID(chat["id"]), "local", (), "", service.options_from({}), partial(save_reply, app))
    reply = Reply(request, 15, 10, service.cancel)
    reply.message_id = uuid.UUID(human["id"])  # taken: the INSERT fails on the primary key, with its SQL
    reply.add_text("a reply with private words")
    service.requests[reply] = request
    now = time.monotonic()
    service._end(reply, Result("stop", 1, 1, 0, now, now, now))
    assert reply.records[-1] == ("error", {"code": 500, "message": "the reply could not be saved"})
    assert "INSERT INTO conversations" in caplog.text and "private words" in caplog.text

"""GET /chats/<id>/export (JSON or Markdown, a download) and POST /chats/import (the JSON back, as a new chat)."""

import copy
import re
import uuid
from datetime import datetime

import pytest

from chatapi.extensions import db
from chatapi.models import Chat, Conversation
from tests.support.client import add_message, create_chat, snapshot

SOURCES = [
    {"n": 1, "title": "Zorblax [volcano] facts", "url": "http://127.0.0.1:8000/articles/volcano", "snippet": "It..."},
    {"n": 2, "title": "", "url": "https://example.org/a (b)", "snippet": ""},
]
ANSWER = "It erupts every 47 minutes [1]. Nobody knows why."
CITATIONS = [{"start": 0, "end": 30, "n": 1}]


def at(minute: int, millisecond: int = 0) -> datetime:
    return datetime(2023, 8, 5, 14, minute, 0, millisecond * 1000)


@pytest.fixture
def chat(app, client) -> dict:
    """A chat with a system prompt, a question, an internet answer with sources and citations, and a
    follow-up, at known times."""
    made = client.post("/chats/create", json={"name": "Zorblax: a volcano?", "system_prompt": "Be brief."}).json
    question = add_message(client, made["id"], "How often does the Zorblax volcano erupt?")
    answer = add_message(client, made["id"], ANSWER, "Assistant")
    follow_up = add_message(client, made["id"], "Thanks!")
    with app.app_context():
        for minute, message in enumerate([question, answer, follow_up], start=1):
            row = db.session.get(Conversation, uuid.UUID(message["id"]))
            row.created_at, row.updated_at = at(minute), at(minute, 500 if minute == 3 else 0)
        row = db.session.get(Conversation, uuid.UUID(answer["id"]))
        row.sources, row.citations, row.model = SOURCES, CITATIONS, "acme/gone-GGUF:Q4_K_M"
        saved = db.session.get(Chat, uuid.UUID(made["id"]))
        saved.created_at, saved.updated_at, saved.model = at(0), at(3), "gemma-3-270m"
        db.session.commit()
        db.session.remove()
    return client.get(f"/chats/{made['id']}").json


EXPORTED = {
    "chatapi_export": 1,
    "chat": {
        "name": "Zorblax: a volcano?",
        "system_prompt": "Be brief.",
        "model": "gemma-3-270m",
        "created_at": "2023-08-05T14:00:00.000Z",
        "updated_at": "2023-08-05T14:03:00.000Z",
    },
    "conversations": [
        {
            "role": "Human",
            "message": "How often does the Zorblax volcano erupt?",
            "model": None,
            "created_at": "2023-08-05T14:01:00.000Z",
            "updated_at": "2023-08-05T14:01:00.000Z",
            "sources": None,
            "citations": None,
        },
        {
            "role": "Assistant",
            "message": ANSWER,
            "model": "acme/gone-GGUF:Q4_K_M",  # the model that wrote it, whether or not the server still has it
            "created_at": "2023-08-05T14:02:00.000Z",
            "updated_at": "2023-08-05T14:02:00.000Z",
            "sources": SOURCES,
            "citations": CITATIONS,
        },
        {
            "role": "Human",
            "message": "Thanks!",
            "model": None,
            "created_at": "2023-08-05T14:03:00.000Z",
            "updated_at": "2023-08-05T14:03:00.500Z",
            "sources": None,
            "citations": None,
        },
    ],
}


def test_the_json_export_is_a_download_of_the_whole_chat(client, chat):
    response = client.get(f"/chats/{chat['id']}/export")
    assert response.status_code == 200 and response.content_type == "application/json"
    disposition = f'attachment; filename="zorblax-a-volcano-{chat["id"][:8]}.json"'
    assert response.headers["Content-Disposition"] == disposition
    assert response.json == EXPORTED
    explicit = client.get(f"/chats/{chat['id']}/export?format=json")
    assert explicit.get_data() == response.get_data()


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("École du soir", "ecole-du-soir"),
        ("日本語のチャット", "chat"),  # nothing ASCII to keep
        ("../../etc/passwd", "etc-passwd"),
        ('say "hi"; rm -rf /', "say-hi-rm-rf"),
        ("x" * 200, "x" * 60),
    ],
)
def test_the_file_name_is_ascii_and_safe(client, name, slug):
    made = create_chat(client, name)
    for format, extension in (("json", "json"), ("markdown", "md")):
        response = client.get(f"/chats/{made['id']}/export?format={format}")
        name = re.fullmatch(r'attachment; filename="([a-z0-9-]+\.(json|md))"', response.headers["Content-Disposition"])
        assert name and name[1] == f"{slug}-{made['id'][:8]}.{extension}"


def test_the_markdown_export_is_for_people(client, chat):
    response = client.get(f"/chats/{chat['id']}/export?format=markdown")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert response.headers["Content-Disposition"] == f'attachment; filename="zorblax-a-volcano-{chat["id"][:8]}.md"'
    assert response.get_data(as_text=True) == (
        "# Zorblax: a volcano?\n\n"
        "**System prompt:**\n\nBe brief.\n\n"
        "## Human · 2023-08-05T14:01:00.000Z\n\nHow often does the Zorblax volcano erupt?\n\n"
        f"## Assistant · 2023-08-05T14:02:00.000Z\n\n{ANSWER}\n\n"
        "Sources:\n\n"
        "1. [Zorblax \\[volcano\\] facts](<http://127.0.0.1:8000/articles/volcano>)\n"
        "2. [https://example.org/a (b)](<https://example.org/a%20(b)>)\n\n"
        "## Human · 2023-08-05T14:03:00.000Z\n\nThanks!\n"
    )
    empty = create_chat(client, "Nothing yet")
    assert client.get(f"/chats/{empty['id']}/export?format=markdown").get_data(as_text=True) == "# Nothing yet\n"


@pytest.mark.parametrize("query", ["format=xml", "format=JSON", "format=", "format=md"])
def test_an_unknown_format_is_422(client, chat, query):
    response = client.get(f"/chats/{chat['id']}/export?{query}")
    assert response.status_code == 422 and "format" in response.json["errors"]


def test_import_makes_a_new_chat_with_the_files_times_and_sources(client, chat):
    exported = client.get(f"/chats/{chat['id']}/export").json
    response = client.post("/chats/import", json=exported)
    assert response.status_code == 201
    imported = response.json
    assert imported["id"] != chat["id"] and imported == dict(chat, id=imported["id"])
    assert response.headers["Location"].endswith(f"/chats/{imported['id']}")
    assert client.get(response.headers["Location"]).json == imported
    old = client.get(f"/chats/{chat['id']}/conversations").json
    new = client.get(f"/chats/{imported['id']}/conversations").json
    assert not {m["id"] for m in old} & {m["id"] for m in new}
    assert [dict(m, id=None, chat_id=None) for m in new] == [dict(m, id=None, chat_id=None) for m in old]
    assert {m["chat_id"] for m in new} == {imported["id"]}
    assert client.get(f"/chats/{imported['id']}/export").json == exported  # the same file again
    assert client.get("/chats/").headers["X-Total-Count"] == "2"  # the original is untouched


def test_an_imported_chat_keeps_its_model_only_where_the_server_has_it(client, chat):
    exported = client.get(f"/chats/{chat['id']}/export").json
    assert client.post("/chats/import", json=exported).json["model"] == "gemma-3-270m"
    elsewhere = dict(exported, chat=dict(exported["chat"], model="acme/gone-GGUF:Q4_K_M"))
    imported = client.post("/chats/import", json=elsewhere).json
    assert imported["model"] is None  # the server's default: a chat naming a model it lacks could not reply
    messages = client.get(f"/chats/{imported['id']}/conversations").json
    assert messages[1]["model"] == "acme/gone-GGUF:Q4_K_M"  # who wrote it stays on record


def test_import_of_an_empty_chat_and_of_ids_it_does_not_use(client):
    document = copy.deepcopy(EXPORTED)
    document["chat"].pop("system_prompt")  # optional: the server's prompt
    document["chat"]["id"] = str(uuid.uuid4())
    taken = create_chat(client, "taken")
    for conversation in document["conversations"]:  # as GET /chats/<id>/conversations lists them
        conversation.update(id=taken["id"], chat_id=taken["id"])
    response = client.post("/chats/import", json=document)
    assert response.status_code == 201 and response.json["system_prompt"] is None
    assert response.json["id"] not in (document["chat"]["id"], taken["id"])
    listed = client.get(f"/chats/{response.json['id']}/conversations").json
    assert [m["message"] for m in listed] == [m["message"] for m in document["conversations"]]
    empty = client.post("/chats/import", json=dict(EXPORTED, conversations=[]))
    assert empty.status_code == 201 and client.get(f"/chats/{empty.json['id']}/conversations").json == []


def test_import_keeps_the_files_order_for_messages_of_the_same_moment(client):
    """The chat's order is by time, then id: the new ids are made to follow the file where times are equal."""
    same = "2023-08-05T14:48:00.000Z"
    messages = [
        {"role": ("Human", "Assistant")[i % 2], "message": f"m{i}", "created_at": same, "updated_at": same}
        for i in range(8)
    ]
    response = client.post("/chats/import", json=dict(EXPORTED, conversations=messages))
    listed = client.get(f"/chats/{response.json['id']}/conversations").json
    assert [m["message"] for m in listed] == [f"m{i}" for i in range(8)]


def broken(path: str, value) -> dict:
    """EXPORTED with the value at the dotted path replaced (or removed, for REMOVE)."""
    document = copy.deepcopy(EXPORTED)
    *parents, last = path.split(".")
    here = document
    for key in parents:
        here = here[int(key)] if isinstance(here, list) else here[key]
    if value is REMOVE:
        del here[last]
    else:
        here[int(last) if isinstance(here, list) else last] = value
    return document


REMOVE = object()
BAD_FILES = [
    ("chatapi_export", REMOVE, "chatapi_export"),
    ("chatapi_export", 2, "chatapi_export"),
    ("chatapi_export", "1", "chatapi_export"),
    ("chat", REMOVE, "chat"),
    ("chat", "Zorblax", "chat"),
    ("chat.name", " ", "chat.name"),
    ("chat.name", "x" * 201, "chat.name"),
    ("chat.system_prompt", "x" * 65537, "chat.system_prompt"),
    ("chat.created_at", "yesterday", "chat.created_at"),
    ("chat.updated_at", REMOVE, "chat.updated_at"),
    ("conversations", {"0": {}}, "conversations"),
    ("conversations", REMOVE, "conversations"),
    ("conversations.2.role", "System", "conversations.2.role"),
    ("conversations.2.message", "", "conversations.2.message"),
    ("conversations.2.message", "nul \x00", "conversations.2.message"),
    ("conversations.2.created_at", REMOVE, "conversations.2.created_at"),
    ("conversations.2", "Thanks!", "conversations.2"),
    ("conversations.0.sources", SOURCES, "conversations.0.sources"),  # a Human message
    ("conversations.1.sources", None, "conversations.1.citations"),  # citations without sources
    ("conversations.1.sources.0.url", "javascript:alert(1)", "conversations.1.sources.0.url"),
    ("conversations.1.sources.0.url", "http:///no-host", "conversations.1.sources.0.url"),
    ("conversations.1.sources.0.n", 0, "conversations.1.sources.0.n"),
    ("conversations.1.sources.0.n", 1.5, "conversations.1.sources.0.n"),
    ("conversations.1.sources.1.n", 1, "conversations.1.sources.1.n"),  # two sources numbered 1
    ("conversations.1.sources.1.title", REMOVE, "conversations.1.sources.1.title"),
    ("conversations.1.citations.0.n", 3, "conversations.1.citations.0.n"),  # no such source
    ("conversations.1.citations.0.end", len(ANSWER) + 1, "conversations.1.citations.0.end"),
    ("conversations.1.citations.0.end", 0, "conversations.1.citations.0.end"),  # not after start
    ("conversations.1.citations.0.start", -1, "conversations.1.citations.0.start"),
]


@pytest.mark.parametrize(("path", "value", "problem"), BAD_FILES, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD_FILES])
def test_a_bad_file_is_422_naming_the_problem_by_path_and_imports_nothing(app, client, chat, path, value, problem):
    before = snapshot(app)
    response = client.post("/chats/import", json=broken(path, value))
    assert response.status_code == 422, response.json
    assert list(response.json["errors"]) == [problem]
    assert all(isinstance(m, str) for m in response.json["errors"][problem])
    assert problem in response.json["message"]
    assert snapshot(app) == before


def test_a_file_bad_at_its_last_message_leaves_no_chat(app, client):
    messages = [
        {"role": ("Human", "Assistant")[i % 2], "message": f"message {i}", "created_at": f"2023-08-05T14:{i:02}:00Z"}
        for i in range(60)
    ]
    for message in messages:
        message["updated_at"] = message["created_at"]
    messages[-1]["role"] = "Narrator"
    before = snapshot(app)
    response = client.post("/chats/import", json=dict(EXPORTED, conversations=messages))
    assert response.status_code == 422 and list(response.json["errors"]) == ["conversations.59.role"]
    assert snapshot(app) == before and client.get("/chats/").json == []
    messages[-1]["role"] = "Assistant"
    imported = client.post("/chats/import", json=dict(EXPORTED, conversations=messages))
    assert imported.status_code == 201
    assert len(client.get(f"/chats/{imported.json['id']}/conversations").json) == 60


def test_an_import_of_more_messages_than_the_cap_is_413_saying_so_and_imports_nothing(app, client, monkeypatch):
    """CHATAPI_MAX_IMPORT_MESSAGES is counted before any message is read: validating and storing them holds the one
    worker (10,000 held it for 3 s)."""
    assert app.config["CHATAPI_MAX_IMPORT_MESSAGES"] == 1000
    monkeypatch.setitem(app.config, "CHATAPI_MAX_IMPORT_MESSAGES", 3)
    message = {"role": "Human", "message": "hello", "created_at": "2023-08-05T14:00:00Z"}
    message["updated_at"] = message["created_at"]
    before = snapshot(app)
    response = client.post("/chats/import", json=dict(EXPORTED, conversations=[message] * 4))
    assert response.status_code == 413 and response.json["code"] == 413
    assert response.json["message"] == (
        "an import may hold at most 3 messages (CHATAPI_MAX_IMPORT_MESSAGES); this one holds 4"
    )
    assert snapshot(app) == before
    assert client.post("/chats/import", json=dict(EXPORTED, conversations=[message] * 3)).status_code == 201


def test_the_import_cap_is_in_the_api_document(client):
    operation = client.get("/openapi.json").json["paths"]["/chats/import"]["post"]
    assert "CHATAPI_MAX_IMPORT_MESSAGES" in operation["responses"]["413"]["description"]

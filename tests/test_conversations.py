"""The /conversations/ routes and the added per-chat listing."""

import uuid
from datetime import UTC, datetime

import pytest

from chatapi.extensions import db
from chatapi.models import Conversation
from tests.support.client import TIMESTAMP, add_message, create_chat, snapshot


def now() -> str:
    """The time now as the API writes it (milliseconds, truncated): the bounds of a request's "now"."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_create_conversation(client):
    chat = create_chat(client)
    client.put(f"/chats/update/{chat['id']}", json={"name": "Chat 1", "updated_at": "2023-08-05T14:48:00.000Z"})
    before = now()
    response = client.post("/conversations/create", json={"chat_id": chat["id"], "role": "Human", "message": "Hello"})
    after = now()
    assert response.status_code == 201
    conversation = response.json
    keys = {"id", "role", "chat_id", "message", "created_at", "updated_at", "sources", "citations", "model"}
    assert set(conversation) == keys
    assert conversation["sources"] is None and conversation["citations"] is None  # only internet answers have them
    assert conversation["model"] is None  # only replies were written by a model
    assert uuid.UUID(conversation["id"])
    assert conversation["chat_id"] == chat["id"]
    assert (conversation["role"], conversation["message"]) == ("Human", "Hello")
    assert TIMESTAMP.match(conversation["created_at"])
    assert before <= conversation["created_at"] == conversation["updated_at"] <= after
    # The chat's updated_at (set to 2023 above) moves to the message's time.
    assert client.get(f"/chats/{chat['id']}").json["updated_at"] == conversation["created_at"]


def written_in_2023(app, client, message: dict) -> dict:
    """The message with both its timestamps moved back to 2023 (the API cannot set them)."""
    with app.app_context():
        conversation = db.session.get(Conversation, uuid.UUID(message["id"]))
        conversation.created_at = conversation.updated_at = datetime(2023, 8, 5, 14, 48)
        db.session.commit()
        db.session.remove()
    moved = client.get(f"/conversations/{message['id']}").json
    assert moved["created_at"] == moved["updated_at"] == "2023-08-05T14:48:00.000Z"
    return moved


def test_both_listings_are_oldest_first_and_per_chat(client):
    chat = create_chat(client)
    other = create_chat(client, "other")
    sent = [add_message(client, chat["id"], f"m{i}", role) for i, role in enumerate(["Human", "Assistant", "Human"])]
    add_message(client, other["id"], "elsewhere")
    by_chat = client.get(f"/chats/{chat['id']}/conversations")
    by_query = client.get(f"/conversations/?chat_id={chat['id']}")
    assert by_chat.status_code == by_query.status_code == 200
    assert by_chat.json == by_query.json == sent


def test_get_update_delete_conversation(app, client):
    chat = create_chat(client)
    message = add_message(client, chat["id"], "first")
    assert client.get(f"/conversations/{message['id']}").json == message
    message = written_in_2023(app, client, message)
    before = now()
    updated = client.put(f"/conversations/update/{message['id']}", json={"message": "second"})
    after = now()
    assert updated.status_code == 200
    assert updated.json["message"] == "second"
    assert updated.json["created_at"] == message["created_at"]
    assert before <= updated.json["updated_at"] <= after
    assert client.get(f"/chats/{chat['id']}").json["updated_at"] == updated.json["updated_at"]
    deleted = client.delete(f"/conversations/delete/{message['id']}")
    assert deleted.json == {"id": message["id"], "deleted": True}
    assert client.get(f"/chats/{chat['id']}/conversations").json == []
    assert client.get(f"/chats/{chat['id']}").status_code == 200


def test_message_text_is_stored_as_given(client):
    chat = create_chat(client)
    text = "  <b>ünïcode</b> 🙂\n\nline two  "
    message = add_message(client, chat["id"], text, "Assistant")
    assert client.get(f"/conversations/{message['id']}").json["message"] == text


def test_editing_an_answer_drops_its_citations(app, client):
    """Citations are offsets into the text: an edit would leave them pointing at other words."""
    chat = create_chat(client)
    answer = add_message(client, chat["id"], "It erupts every 47 minutes [1].", "Assistant")
    sources = [{"n": 1, "title": "Volcano", "url": "http://127.0.0.1/volcano", "snippet": "..."}]
    with app.app_context():
        conversation = db.session.get(Conversation, uuid.UUID(answer["id"]))
        conversation.sources, conversation.citations = sources, [{"start": 0, "end": 31, "n": 1}]
        db.session.commit()
        db.session.remove()
    assert client.get(f"/conversations/{answer['id']}").json["citations"] == [{"start": 0, "end": 31, "n": 1}]
    edited = client.put(f"/conversations/update/{answer['id']}", json={"message": "Every hour, I think."}).json
    assert edited["citations"] == [] and edited["sources"] == sources
    assert client.get(f"/conversations/{answer['id']}").json == edited


def test_delete_after_a_message_deletes_the_later_ones_of_its_chat(app, client):
    chat = create_chat(client)
    other = create_chat(client, "other")
    sent = [add_message(client, chat["id"], f"m{i}", ("Human", "Assistant")[i % 2]) for i in range(5)]
    elsewhere = add_message(client, other["id"], "stays")
    chat_before = client.get(f"/chats/{chat['id']}").json
    response = client.delete(f"/chats/{chat['id']}/conversations?after={sent[1]['id']}")
    assert response.status_code == 200
    assert response.json == {"chat_id": chat["id"], "deleted": 3}
    assert client.get(f"/chats/{chat['id']}/conversations").json == sent[:2]
    assert client.get(f"/chats/{other['id']}/conversations").json == [elsewhere]
    assert client.get(f"/chats/{chat['id']}").json == chat_before  # deleting is no new activity
    # After the last message there is nothing to delete.
    last = client.delete(f"/chats/{chat['id']}/conversations?after={sent[1]['id']}")
    assert last.json == {"chat_id": chat["id"], "deleted": 0}


def test_delete_after_follows_the_chats_order_for_messages_of_the_same_moment(app, client):
    """The chat's order is by time, then id: what comes after a message is what the listing shows after it."""
    chat = create_chat(client)
    sent = [add_message(client, chat["id"], f"m{i}") for i in range(6)]
    with app.app_context():
        for message in sent:
            db.session.get(Conversation, uuid.UUID(message["id"])).created_at = datetime(2023, 8, 5, 14, 48)
        db.session.commit()
        db.session.remove()
    listed = client.get(f"/chats/{chat['id']}/conversations").json
    assert sorted(m["id"] for m in listed) == [m["id"] for m in listed]  # all at one time: by id
    response = client.delete(f"/chats/{chat['id']}/conversations?after={listed[2]['id']}")
    assert response.json["deleted"] == 3
    assert client.get(f"/chats/{chat['id']}/conversations").json == listed[:3]


@pytest.mark.parametrize(
    ("query", "code", "field"),
    [
        ("", 422, "after"),
        ("after=", 422, "after"),
        ("after=not-a-uuid", 422, "after"),
        (f"after={uuid.uuid4()}", 404, None),  # well-formed but unknown
        ("after={other}", 404, None),  # a message of another chat
    ],
)
def test_delete_after_needs_a_message_of_the_chat(app, client, query, code, field):
    chat = create_chat(client)
    add_message(client, chat["id"], "first")
    add_message(client, chat["id"], "second", "Assistant")
    other = add_message(client, create_chat(client, "other")["id"], "elsewhere")
    before = snapshot(app)
    response = client.delete(f"/chats/{chat['id']}/conversations?{query.format(other=other['id'])}")
    assert response.status_code == code and response.json["code"] == code
    if field:
        assert field in response.json["errors"]
    else:
        assert "not found in chat" in response.json["message"]
    assert snapshot(app) == before

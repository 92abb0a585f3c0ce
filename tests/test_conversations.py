"""The /conversations/ routes and the added per-chat listing."""

import time
import uuid

from helpers import TIMESTAMP, add_message, create_chat


def test_create_conversation(client):
    chat = create_chat(client)
    time.sleep(0.01)
    response = client.post("/conversations/create", json={"chat_id": chat["id"], "role": "Human", "message": "Hello"})
    assert response.status_code == 201
    conversation = response.json
    assert set(conversation) == {"id", "role", "chat_id", "message", "created_at", "updated_at", "sources"}
    assert conversation["sources"] is None  # only internet answers carry sources
    assert uuid.UUID(conversation["id"])
    assert conversation["chat_id"] == chat["id"]
    assert (conversation["role"], conversation["message"]) == ("Human", "Hello")
    assert TIMESTAMP.match(conversation["created_at"])
    # The chat's updated_at moves to the message's time.
    assert client.get(f"/chats/{chat['id']}").json["updated_at"] == conversation["created_at"]
    assert conversation["created_at"] > chat["updated_at"]


def test_both_listings_are_oldest_first_and_per_chat(client):
    chat = create_chat(client)
    other = create_chat(client, "other")
    sent = [add_message(client, chat["id"], f"m{i}", role) for i, role in enumerate(["Human", "Assistant", "Human"])]
    add_message(client, other["id"], "elsewhere")
    by_chat = client.get(f"/chats/{chat['id']}/conversations")
    by_query = client.get(f"/conversations/?chat_id={chat['id']}")
    assert by_chat.status_code == by_query.status_code == 200
    assert by_chat.json == by_query.json == sent


def test_get_update_delete_conversation(client):
    chat = create_chat(client)
    message = add_message(client, chat["id"], "first")
    assert client.get(f"/conversations/{message['id']}").json == message
    time.sleep(0.01)
    updated = client.put(f"/conversations/update/{message['id']}", json={"message": "second"})
    assert updated.status_code == 200
    assert updated.json["message"] == "second"
    assert updated.json["created_at"] == message["created_at"]
    assert updated.json["updated_at"] > message["updated_at"]
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

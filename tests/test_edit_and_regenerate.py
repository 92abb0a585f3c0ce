"""Edit (PUT the message, then DELETE /chats/<id>/conversations?after=<it>, then a new reply), against the real
server and the real model."""

import requests

from tests.support.chats import ENDLESS, GREEDY, QUESTION, history, infer, new_chat
from tests.support.sse import EventStream, read_events


def answered(base: str, *messages: str) -> tuple[str, dict]:
    """A chat of the messages (Human first) answered by the model: its id and the done event's data."""
    chat_id = new_chat(base, *messages)
    done = read_events(infer(base, chat_id, f"max_tokens=8&{GREEDY}"))[-1]
    assert done["event"] == "done", done
    return chat_id, done["data"]


def delete_after(base: str, chat_id: str, after: str) -> requests.Response:
    return requests.delete(f"{base}/chats/{chat_id}/conversations", params={"after": after}, timeout=10)


def test_edit_deletes_what_came_after_and_the_edited_message_is_answered_again(inference_server, client):
    base = inference_server
    chat_id, _ = answered(base, "What is the capital of Spain?")
    question, old = history(base, chat_id)
    edited = requests.put(f"{base}/conversations/update/{question['id']}", json={"message": QUESTION}, timeout=10)
    assert edited.status_code == 200
    deleted = delete_after(base, chat_id, question["id"])
    assert deleted.status_code == 200 and deleted.json() == {"chat_id": chat_id, "deleted": 1}
    assert history(base, chat_id) == [edited.json()]
    # The page asks with `after` (it names the message to answer): the earlier reply to it was deleted, so
    # this is no reload of that reply but a new one.
    events = read_events(infer(base, chat_id, f"max_tokens=8&{GREEDY}&after={question['id']}"))
    assert events[-1]["event"] == "done" and events[0]["data"]["message_id"] != old["id"]
    assert "Paris" in events[-1]["data"]["message"]["message"]  # the edited question was answered
    assert history(base, chat_id) == [edited.json(), events[-1]["data"]["message"]]
    again = requests.get(infer(base, chat_id, f"max_tokens=8&{GREEDY}&after={question['id']}"), timeout=10)
    assert again.status_code == 204


def test_deleting_after_a_message_while_a_reply_runs_is_409(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)
    first = history(base, chat_id)[0]
    stream = EventStream(infer(base, chat_id, f"max_tokens=400&{GREEDY}"))
    iterator = iter(stream)
    next(iterator), next(iterator)  # generating now
    refused = delete_after(base, chat_id, first["id"])
    assert refused.status_code == 409 and refused.headers["Content-Type"] == "application/json"
    assert refused.json()["code"] == 409 and "stop it first" in refused.json()["message"]
    assert len(history(base, chat_id)) == len(ENDLESS)
    requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    assert list(iterator)[-1]["event"] == "done"
    deleted = delete_after(base, chat_id, first["id"])
    assert deleted.json() == {"chat_id": chat_id, "deleted": len(ENDLESS)}  # the stopped reply's part too
    assert history(base, chat_id) == [first]

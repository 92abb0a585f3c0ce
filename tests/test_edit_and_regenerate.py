"""Regenerate (`replace=<the last Assistant message>` on the stream routes) and edit (PUT the message, then
DELETE /chats/<id>/conversations?after=<it>, then a new reply), against the real server and the real model."""

import uuid

import pytest
import requests

from tests.support.chats import ENDLESS, GREEDY, QUESTION, history, infer, new_chat, pieces
from tests.support.sse import EventStream, read_events, read_events_acting, read_events_dropped_and_resumed

STREAM_ROUTES = pytest.mark.parametrize("route", ["inference", "inference_internet"])


def answered(base: str, *messages: str) -> tuple[str, dict]:
    """A chat of the messages (Human first) answered by the model: its id and the done event's data."""
    chat_id = new_chat(base, *messages)
    done = read_events(infer(base, chat_id, f"max_tokens=8&{GREEDY}"))[-1]
    assert done["event"] == "done", done
    return chat_id, done["data"]


def delete_after(base: str, chat_id: str, after: str) -> requests.Response:
    return requests.delete(f"{base}/chats/{chat_id}/conversations", params={"after": after}, timeout=10)


def test_regenerate_answers_the_history_before_and_replaces_the_answer_when_saved(inference_server, client):
    base = inference_server
    chat_id, first = answered(base, QUESTION)
    question, old = history(base, chat_id)
    assert old == first["message"]
    url = infer(base, chat_id, f"max_tokens=8&{GREEDY}&replace={old['id']}")
    events = read_events(url)
    start, done = events[0]["data"], events[-1]["data"]
    assert events[-1]["event"] == "done" and start["message_id"] != old["id"]
    new = done["message"]
    assert new["id"] == start["message_id"] and new["role"] == "Assistant"
    assert new["message"] == pieces(events).strip()
    assert history(base, chat_id) == [question, new]  # replaced, in the same place
    assert requests.get(f"{base}/conversations/{old['id']}", timeout=10).status_code == 404
    # The same prompt as the first answer's (the history before it, without it), read from the chat's cache.
    assert done["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
    assert done["usage"]["cached_tokens"] == done["usage"]["prompt_tokens"] - 1
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).json()["updated_at"] == new["created_at"]

    # A reconnect after the end, and a page reloaded with the message it answers, start nothing.
    again = requests.get(url, headers={"Last-Event-ID": events[-1]["id"]}, timeout=10)
    assert again.status_code == 204
    reload = requests.get(f"{url}&after={question['id']}", timeout=10)
    assert reload.status_code == 204
    assert history(base, chat_id) == [question, new]


def test_a_regenerate_resumes_after_last_event_id(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS, "An old answer.")
    old = history(base, chat_id)[-1]
    url = infer(base, chat_id, f"max_tokens=40&{GREEDY}&replace={old['id']}")
    events = read_events_dropped_and_resumed(url)
    assert [int(e["id"].rsplit(".", 1)[1]) for e in events] == list(range(len(events)))
    assert events[-1]["event"] == "done"
    saved = history(base, chat_id)
    assert [m["message"] for m in saved[:-1]] == list(ENDLESS)
    assert saved[-1] == events[-1]["data"]["message"] and saved[-1]["message"] == pieces(events).strip()


def test_a_stopped_regenerate_replaces_the_answer_with_what_it_wrote(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS, "An old answer.")
    old = history(base, chat_id)[-1]

    def stop():
        assert history(base, chat_id)[-1] == old  # until the new answer is saved, the old one stays
        assert requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10).json()["stopped"] is True

    events = read_events_acting(infer(base, chat_id, f"max_tokens=400&{GREEDY}&replace={old['id']}"), 4, stop)
    done = events[-1]["data"]
    assert done["finish_reason"] == "cancelled" and done["message"]["message"] == pieces(events).strip()
    saved = history(base, chat_id)
    assert len(saved) == len(ENDLESS) + 1 and saved[-1] == done["message"]
    assert old["id"] not in [m["id"] for m in saved]


def test_a_regenerate_that_ends_without_text_keeps_the_old_answer(one_at_a_time_server, client):
    base = one_at_a_time_server
    busy = new_chat(base, *ENDLESS)
    running = EventStream(infer(base, busy, f"max_tokens=2000&{GREEDY}"))
    running_events = iter(running)
    next(running_events)
    chat_id = new_chat(base, QUESTION, "Paris, I think.")
    question, old = history(base, chat_id)
    url = infer(base, chat_id, f"max_tokens=8&{GREEDY}&replace={old['id']}")
    queued = EventStream(url)  # waits behind the busy reply
    queued_events = iter(queued)
    assert [next(queued_events)["event"], next(queued_events)["event"]] == ["start", "queued"]
    assert requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10).json()["stopped"] is True
    done = list(queued_events)[-1]
    assert done["event"] == "done" and done["data"]["message"] is None
    assert done["data"]["finish_reason"] == "cancelled"
    assert history(base, chat_id) == [question, old]  # nothing was written: the old answer stays
    # That regenerate is over: a page reloaded with it does not start it again.
    assert requests.get(f"{url}&after={question['id']}", timeout=10).status_code == 204
    requests.post(f"{base}/conversations/stop/{busy}", timeout=10)
    list(running_events)
    # Asked again, it is made, and replaces the old answer.
    events = read_events(url)
    assert events[-1]["event"] == "done"
    assert history(base, chat_id) == [question, events[-1]["data"]["message"]]


@STREAM_ROUTES
def test_replace_must_name_the_chats_last_message_an_assistant_one(inference_server, app, client, route):
    """409 (or 422 for a malformed id) before any stream or web search: nothing changes, nothing starts."""
    base = inference_server
    chat_id = new_chat(base, QUESTION, "Paris.", "And of Italy?")
    question, answer, follow_up = history(base, chat_id)
    only_assistant = new_chat(base, "Hello, I am the assistant.", roles=("Assistant",))
    lone = history(base, only_assistant)[0]
    cases = [
        (chat_id, answer["id"], 409, "not the last message"),  # an Assistant message, but not the last
        (chat_id, follow_up["id"], 409, "a Human message"),  # the last, but a Human one
        (chat_id, question["id"], 409, "not the last message"),
        (chat_id, str(uuid.uuid4()), 409, "not the last message"),  # unknown
        (only_assistant, lone["id"], 409, "no Human message"),  # nothing before it to answer
        (chat_id, "nope", 422, "replace"),
    ]
    for chat, replace, code, says in cases:
        response = requests.get(infer(base, chat, f"max_tokens=8&replace={replace}", route), timeout=10)
        assert response.status_code == code and response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["code"] == code and says in body["message"], body
        if code == 422:
            assert "replace" in body["errors"]
    assert history(base, chat_id) == [question, answer, follow_up]
    assert history(base, only_assistant) == [lone]
    assert requests.get(f"{base}/health", timeout=10).json()["model"]["replies"] == {"running": 0, "waiting": 0}


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

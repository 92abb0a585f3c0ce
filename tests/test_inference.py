"""GET /conversations/inference/<chat_id> against the real server and the real model."""

import json
import threading
import time
import uuid
from urllib.parse import urlencode

import jsonschema
import pytest
import requests

from tests.support import wait_for
from tests.support.chats import ENDLESS, GREEDY, QUESTION, add_message, history, infer, new_chat, pieces
from tests.support.metrics import moved, scrape
from tests.support.server import FAST_STREAM_SETTINGS
from tests.support.sse import Arrivals, EventStream, read_events, read_events_acting, read_events_dropped_and_resumed

# Both stream routes check their input the same way before any stream (or web search) starts.
STREAM_ROUTES = pytest.mark.parametrize("route", ["inference", "inference_internet"])


def wait_for_reply(base: str, chat_id: str, count: int) -> dict:
    """The chat's last message once it holds `count`."""
    wait_for(lambda: len(history(base, chat_id)) >= count, what=f"{count} messages")
    return history(base, chat_id)[-1]


def test_stream_events_in_order_and_the_reply_is_saved(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    before = requests.get(f"{base}/chats/{chat_id}", timeout=5).json()["updated_at"]
    stream = EventStream(infer(base, chat_id))
    headers = stream.response.headers
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    events = list(stream)

    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"message"}, kinds
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids) and all(ids)
    start, done = events[0]["data"], events[-1]["data"]
    assert start == {
        "chat_id": chat_id,
        "message_id": start["message_id"],
        "mode": "local",
        "model": "gemma-3-270m",
        "truncated": 0,
    }

    saved = done["message"]
    assert saved["id"] == start["message_id"] and saved["role"] == "Assistant" and saved["chat_id"] == chat_id
    assert saved["message"] == pieces(events).strip() and saved["message"]
    assert "Paris" in saved["message"]
    assert saved["sources"] is None and saved["citations"] is None and done["citations"] is None  # local mode
    assert history(base, chat_id)[-1] == saved
    assert requests.get(f"{base}/chats/{chat_id}", timeout=5).json()["updated_at"] > before

    assert done["finish_reason"] in ("stop", "length")
    usage, timings = done["usage"], done["timings"]
    # A new chat may reuse another chat's system-prompt prefix, never its own (it has none yet).
    assert usage["prompt_tokens"] > len(QUESTION.split()) and 0 <= usage["cached_tokens"] < usage["prompt_tokens"]
    assert len(kinds) - 2 <= usage["completion_tokens"] <= 24
    assert 0 <= timings["queue_ms"] <= timings["ttft_ms"] <= timings["total_ms"]
    assert timings["tokens_per_second"] > 1
    # The first token in parts: the prompt built, (waiting,) handed to the model's thread, read to its first token.
    parts = timings["prompt_ms"], timings["handoff_ms"], timings["prefill_ms"]
    assert min(parts) >= 0 and timings["prompt_ms"] <= timings["queue_ms"] and timings["prefill_ms"] > 0
    assert abs(timings["queue_ms"] + timings["handoff_ms"] + timings["prefill_ms"] - timings["ttft_ms"]) <= 0.3


def test_a_chats_system_prompt_replaces_the_servers(inference_server, app, client):
    base = inference_server
    server_prompt = app.config["CHATAPI_SYSTEM_PROMPT"]  # the server's too: the same environment

    def prompt_tokens(system_prompt: str | None) -> int:
        chat_id = new_chat(base, QUESTION)
        if system_prompt is not None:
            body = {"system_prompt": system_prompt}
            assert requests.put(f"{base}/chats/update/{chat_id}", json=body, timeout=10).status_code == 200
        return read_events(infer(base, chat_id, f"max_tokens=1&{GREEDY}"))[-1]["data"]["usage"]["prompt_tokens"]

    default = prompt_tokens(None)
    assert prompt_tokens(server_prompt) == default  # the same text in its place, not added to it
    assert prompt_tokens("Be brief.") < default
    assert prompt_tokens(server_prompt + " Answer like a pirate, with many a colourful word.") > default


def test_a_new_system_prompt_applies_from_the_next_reply(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, "My name is Ada. Remember it.")
    first = read_events(infer(base, chat_id))[-1]["data"]
    requests.put(f"{base}/chats/update/{chat_id}", json={"system_prompt": "You are a terse assistant."}, timeout=10)
    add_message(base, chat_id, "What is my name?")
    second = read_events(infer(base, chat_id))[-1]["data"]
    # The prompt starts with the system prompt: the chat's cache is good for no more than the tokens before it.
    assert second["usage"]["cached_tokens"] < 5 < first["usage"]["prompt_tokens"]


def test_temperature_zero_is_repeatable(inference_server, client):
    base = inference_server
    replies = [read_events(infer(base, new_chat(base, QUESTION)))[-1]["data"]["message"]["message"] for _ in range(2)]
    assert replies[0] == replies[1]


def test_a_follow_up_turn_reuses_the_cached_history(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, "My name is Ada. Remember it.")
    first = read_events(infer(base, chat_id))[-1]["data"]
    add_message(base, chat_id, "What is my name?")
    second = read_events(infer(base, chat_id))[-1]["data"]
    # Everything up to the end of the first reply was already in the KV cache.
    assert second["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert second["usage"]["prompt_tokens"] - second["usage"]["cached_tokens"] < 30


def test_chats_taking_turns_keep_their_caches(inference_server, client):
    base = inference_server
    chats = [new_chat(base, f"Chat number {n} says hello.") for n in range(3)]
    firsts = [read_events(infer(base, c))[-1]["data"] for c in chats]
    for chat_id, first in zip(chats, firsts, strict=True):
        add_message(base, chat_id, "Say it again.")
        again = read_events(infer(base, chat_id))[-1]["data"]
        assert again["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"], (first, again)


def test_a_second_request_joins_the_running_generation(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)
    url = infer(base, chat_id, f"max_tokens=60&{GREEDY}")
    first = EventStream(url)
    iterator = iter(first)
    head = [next(iterator) for _ in range(4)]
    joined = read_events(url)  # while the first is still generating
    rest = list(iterator)
    assert joined[0]["data"]["message_id"] == head[0]["data"]["message_id"]
    assert [e["id"] for e in joined] == [e["id"] for e in head + rest]
    assert joined[-1]["event"] == "done"
    saved = history(base, chat_id)
    assert len(saved) == len(ENDLESS) + 1 and saved[-1]["message"] == pieces(joined).strip()


def test_reconnect_with_last_event_id_resumes_then_204_after_the_end(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)
    url = infer(base, chat_id, f"max_tokens=40&{GREEDY}")
    events = read_events_dropped_and_resumed(url)
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), "replay repeated or skipped events"
    assert [int(i.rsplit(".", 1)[1]) for i in ids] == list(range(len(ids)))
    done = events[-1]
    assert done["event"] == "done"
    assert done["data"]["message"]["message"] == pieces(events).strip()
    after = requests.get(url, headers={"Last-Event-ID": done["id"]}, timeout=10)
    assert after.status_code == 204 and after.content == b""
    assert len(history(base, chat_id)) == len(ENDLESS) + 1  # the 204 started nothing new


def test_a_finished_reply_is_resumed_where_its_client_left(inference_server, client):
    """A finished reply is kept as the events it sent: a client whose stream broke before `done` gets the rest."""
    base = inference_server
    url = infer(base, new_chat(base, QUESTION))
    events = read_events(url)
    assert events[-1]["event"] == "done" and len(events) > 4
    assert read_events(url, last_event_id=events[2]["id"]) == events[3:]


def test_after_names_the_message_a_reply_answers(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    question = history(base, chat_id)[-1]["id"]
    done = read_events(infer(base, chat_id, f"max_tokens=8&{GREEDY}&after={question}"))[-1]
    assert done["event"] == "done"
    # Asked again for the same message (a page reloaded just as the reply ended): no second reply.
    again = requests.get(infer(base, chat_id, f"max_tokens=8&{GREEDY}&after={question}"), timeout=10)
    assert again.status_code == 204 and again.content == b""
    assert len(history(base, chat_id)) == 2
    bad = requests.get(infer(base, chat_id, "after=nope"), timeout=10)
    assert bad.status_code == 422 and "after" in bad.json()["errors"]


def test_after_joins_the_reply_still_running(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)
    question = history(base, chat_id)[-1]["id"]
    url = infer(base, chat_id, f"max_tokens=40&{GREEDY}&after={question}")
    first = EventStream(url)
    iterator = iter(first)
    head = [next(iterator) for _ in range(3)]
    joined = read_events(url)  # the same `after` while the reply runs: the same reply, from its start
    rest = list(iterator)
    assert [e["id"] for e in joined] == [e["id"] for e in head + rest]
    assert joined[-1]["event"] == "done" and joined == head + rest
    assert [m["role"] for m in history(base, chat_id)] == ["Human", "Assistant", "Human", "Assistant"]


def test_after_an_unknown_message_starts_nothing(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    response = requests.get(infer(base, chat_id, f"after={uuid.uuid4()}"), timeout=10)
    assert response.status_code == 204 and response.content == b""
    assert len(history(base, chat_id)) == 1


@pytest.mark.parametrize("last_event_id", ["nonsense", f"{uuid.uuid4()}.3", f"{uuid.uuid4()}.x", ""])
def test_an_unknown_last_event_id_starts_the_unanswered_reply(inference_server, client, last_event_id):
    """A reconnect whose reply the server does not know (a restart lost it, or the id is garbage) gets the
    reply to the latest Human message, which nothing has answered yet."""
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    events = read_events(infer(base, chat_id), last_event_id=last_event_id)
    assert [events[0]["event"], events[-1]["event"]] == ["start", "done"]
    assert [m["role"] for m in history(base, chat_id)] == ["Human", "Assistant"]
    # Once that reply is saved, the same unknown id finds nothing left to answer.
    again = requests.get(infer(base, chat_id), headers={"Last-Event-ID": last_event_id}, timeout=10)
    assert again.status_code == 204
    assert len(history(base, chat_id)) == 2


@pytest.mark.parametrize("position", ["\u00b2", "9" * 5000, "-1", "+1", " 1"])
def test_a_last_event_id_with_a_position_that_is_no_number(inference_server, client, position):
    """Found by hand while fuzzing: "²" passes str.isdigit and 5000 digits pass too, but int() refuses both (500)."""
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    message_id = read_events(infer(base, chat_id))[-1]["data"]["message"]["id"]
    response = requests.get(infer(base, chat_id), headers={"Last-Event-ID": f"{message_id}.{position}"}, timeout=10)
    assert response.status_code == 204, response.text  # as for any id of no event: the reply was delivered
    assert len(history(base, chat_id)) == 2


def test_a_stale_last_event_id_does_not_suppress_the_reply_to_a_newer_message(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    old = read_events(infer(base, chat_id))
    add_message(base, chat_id, "And of Italy?")
    # An EventSource still holding the old reply's last id reconnects: the new question is answered.
    new = read_events(infer(base, chat_id), last_event_id=old[-1]["id"])
    assert new[0]["event"] == "start" and new[-1]["event"] == "done"
    assert new[0]["data"]["message_id"] != old[0]["data"]["message_id"]
    assert [m["role"] for m in history(base, chat_id)] == ["Human", "Assistant", "Human", "Assistant"]
    assert history(base, chat_id)[-1]["message"] == new[-1]["data"]["message"]["message"]


def test_a_last_event_id_from_before_a_restart(start_server, client):
    first = start_server(**FAST_STREAM_SETTINGS)
    answered, unanswered = new_chat(first.url, QUESTION), new_chat(first.url, QUESTION)
    last_id = read_events(infer(first.url, answered))[-1]["id"]
    first.stop()
    second = start_server(**FAST_STREAM_SETTINGS).url
    # The reply was delivered and saved before the restart: nothing to resend or start.
    response = requests.get(infer(second, answered), headers={"Last-Event-ID": last_id}, timeout=10)
    assert response.status_code == 204 and len(history(second, answered)) == 2
    # A reply lost with the old process (here: never started) is made by the new one.
    events = read_events(infer(second, unanswered), last_event_id=f"{uuid.uuid4()}.7")
    assert events[-1]["event"] == "done" and len(history(second, unanswered)) == 2


def test_stop_ends_the_generation_and_saves_the_partial_reply(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)

    def stop():
        stopped = requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
        assert stopped.json() == {"chat_id": chat_id, "stopped": True}

    events = read_events_acting(infer(base, chat_id, f"max_tokens=400&{GREEDY}"), 4, stop)
    done = events[-1]["data"]
    assert done["finish_reason"] == "cancelled"
    assert done["usage"]["completion_tokens"] < 40  # stopped within a token or so, not at 400
    assert done["message"]["message"] == pieces(events).strip()
    assert history(base, chat_id)[-1]["message"] == done["message"]["message"]
    idle = requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    assert idle.json() == {"chat_id": chat_id, "stopped": False}


def test_stopping_a_queued_reply_takes_it_out_of_the_queue(one_at_a_time_server, client):
    base = one_at_a_time_server
    busy = new_chat(base, *ENDLESS)
    running = EventStream(infer(base, busy, f"max_tokens=2000&{GREEDY}"))
    running_events = iter(running)
    next(running_events)
    queued_chat, behind_chat = new_chat(base, QUESTION), new_chat(base, QUESTION)
    queued = EventStream(infer(base, queued_chat))
    behind = EventStream(infer(base, behind_chat))
    behind_events = iter(behind)
    assert [next(behind_events)["event"], next(behind_events)["data"]] == ["start", {"position": 2}]

    stopped = requests.post(f"{base}/conversations/stop/{queued_chat}", timeout=10)
    assert stopped.json() == {"chat_id": queued_chat, "stopped": True}
    events = list(queued)
    assert [e["event"] for e in events] == ["start", "queued", "done"]
    done = events[-1]["data"]
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] == 0
    assert done["message"] is None and len(history(base, queued_chat)) == 1
    # The one behind it moves up, and the running reply goes on.
    moved = next(behind_events)
    assert (moved["event"], moved["data"]) == ("queued", {"position": 1})
    requests.post(f"{base}/conversations/stop/{busy}", timeout=10)
    assert list(running_events)[-1]["data"]["finish_reason"] == "cancelled"
    assert list(behind_events)[-1]["event"] == "done"


def test_a_stream_nobody_reads_is_cancelled_after_the_grace_period(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)
    before = scrape(base)
    unread = requests.get(infer(base, chat_id, f"max_tokens=2000&{GREEDY}"), stream=True, timeout=10)
    assert unread.status_code == 200
    unread.close()  # not one event read

    def cancelled() -> float:
        return moved(before, scrape(base), "chatapi_replies_finished_total", mode="local", finish_reason="cancelled")

    wait_for(lambda: cancelled() == 1, what="the unread reply to be cancelled")
    assert moved(before, scrape(base), "chatapi_reply_completion_tokens_total", mode="local") < 2000
    # What it made before then is saved (nothing, when a slow machine was still reading the prompt).
    saved = history(base, chat_id)[len(ENDLESS) :]
    if saved:
        rest = read_events(infer(base, chat_id), last_event_id=f"{saved[0]['id']}.0")
        assert rest[-1]["event"] == "done" and rest[-1]["data"]["finish_reason"] == "cancelled"


def test_a_client_that_goes_away_frees_the_model(one_at_a_time_server, client):
    base = one_at_a_time_server
    gone = new_chat(base, *ENDLESS)
    stream = EventStream(infer(base, gone, f"max_tokens=2000&{GREEDY}"))
    iterator = iter(stream)
    head = [next(iterator) for _ in range(3)]
    stream.close()
    # Pings (0.5 s) notice the closed socket, the grace period (1 s) runs out, the model is freed.
    waiting = new_chat(base, QUESTION)
    assert read_events(infer(base, waiting))[-1]["event"] == "done"
    abandoned = read_events(infer(base, gone), last_event_id=head[-1]["id"])[-1]["data"]
    assert abandoned["finish_reason"] == "cancelled"
    assert abandoned["usage"]["completion_tokens"] < 2000


def test_waiting_clients_are_told_their_place(one_at_a_time_server, client):
    base = one_at_a_time_server
    streams = {"first": EventStream(infer(base, new_chat(base, *ENDLESS), f"max_tokens=200&{GREEDY}"))}
    for name in ("second", "third"):  # each queued before the next is asked for
        streams[name] = EventStream(infer(base, new_chat(base, QUESTION)))
    arrivals = Arrivals()  # every event of the three streams, in the order they arrived
    for name, stream in streams.items():
        arrivals.read(name, stream)
    arrivals.join()

    assert [e["data"] for e in arrivals.events("second") if e["event"] == "queued"] == [{"position": 1}]
    # The third moves up when the first ends and the second starts.
    third_queued = [e["data"] for e in arrivals.events("third") if e["event"] == "queued"]
    assert third_queued == [{"position": 2}, {"position": 1}]
    assert all(arrivals.events(name)[-1]["event"] == "done" for name in streams)
    # Each waited: its first token came after the reply ahead of it was done.
    assert arrivals.first("first", "done") < arrivals.first("second", "message")
    assert arrivals.first("second", "done") < arrivals.first("third", "message")
    assert streams["second"].pings > 0  # kept alive while it waited


def test_other_routes_answer_promptly_during_a_generation(inference_server, client):
    base = inference_server

    def list_chats_ms() -> float:
        started = time.perf_counter()
        assert requests.get(f"{base}/chats/?limit=20", timeout=10).status_code == 200
        return (time.perf_counter() - started) * 1000

    idle = sorted(list_chats_ms() for _ in range(20))[10]
    chat_id = new_chat(base, *ENDLESS)
    stream = EventStream(infer(base, chat_id, f"max_tokens=1000&{GREEDY}"))
    iterator = iter(stream)
    next(iterator), next(iterator)  # generating now
    during = sorted(list_chats_ms() for _ in range(20))
    requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    done = list(iterator)[-1]["data"]
    # A hub blocked by the generation would answer the listings only after it ended at max_tokens;
    # here they were all answered while it ran, and the stop that followed ended it.
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] < 1000
    # Sharing the two cores with the model slows a listing down, but not by orders of magnitude.
    assert during[10] < 50 * idle, (idle, during)


def test_long_history_is_trimmed_oldest_first(start_server, client):
    base = start_server(CHATAPI_N_CTX="512", **{"CHATAPI_PING_SECONDS": "0.5"}).url
    # Messages of different lengths, so that which ones were kept shows in the prompt's length.
    old = [f"Old message {i}: " + "lorem ipsum dolor sit amet " * (6 + i) for i in range(12)]
    question = "Now, what is two plus two?"
    events = read_events(infer(base, new_chat(base, *old, question), f"max_tokens=32&{GREEDY}"))
    dropped = events[0]["data"]["truncated"]
    assert 0 < dropped < len(old)
    trimmed = events[-1]["data"]["usage"]["prompt_tokens"]
    assert trimmed <= 512 - 32
    # The same chat without its `dropped` oldest messages fits whole and makes exactly the same prompt.
    roles = ("Human", "Assistant") if dropped % 2 == 0 else ("Assistant", "Human")
    newest = read_events(infer(base, new_chat(base, *old[dropped:], question, roles=roles), f"max_tokens=1&{GREEDY}"))
    assert newest[0]["data"]["truncated"] == 0
    assert newest[-1]["data"]["usage"]["prompt_tokens"] == trimmed
    huge = new_chat(base, "tell me " * 3000)  # one message longer than the whole window
    events = read_events(infer(base, huge, f"max_tokens=16&{GREEDY}"))
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["usage"]["prompt_tokens"] <= 512 - 16


def test_a_chat_ending_in_long_assistant_messages_is_trimmed_to_fit(start_server, client):
    """Messages after the latest Human one (added by hand, or before a regenerate) are trimmed too: the oldest
    left out, the last cut to its end, and `truncated` says so. They used to overflow the window, and the failed
    decode ended the reply (and every other running) with an error."""
    base = start_server(CHATAPI_N_CTX="512", **FAST_STREAM_SETTINGS).url
    chat = new_chat(base, QUESTION, "lorem ipsum " * 600, roles=("Human", "Assistant"))
    add_message(base, chat, "dolor sit amet " * 600, "Assistant")
    events = read_events(infer(base, chat, f"max_tokens=16&{GREEDY}"))
    assert events[0]["data"]["truncated"] == 2  # the first Assistant message left out, the last cut
    assert events[-1]["event"] == "done", events[-1]
    assert events[-1]["data"]["usage"]["prompt_tokens"] <= 512 - 16


def test_a_full_queue_answers_503_with_retry_after(start_server, client):
    base = start_server(CHATAPI_QUEUE_SIZE="1", CHATAPI_PING_SECONDS="0.5").url
    busy = new_chat(base, *ENDLESS)
    stream = EventStream(infer(base, busy, f"max_tokens=400&{GREEDY}"))
    iterator = iter(stream)
    next(iterator)
    other = new_chat(base, QUESTION)
    refused = requests.get(infer(base, other), timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert refused.json()["code"] == 503 and "queue" in refused.json()["message"]
    assert len(history(base, other)) == 1
    requests.post(f"{base}/conversations/stop/{busy}", timeout=10)
    list(iterator)
    assert read_events(infer(base, other))[-1]["event"] == "done"  # room again


def test_deleting_the_chat_mid_reply_stops_it_with_an_error_and_saves_nothing(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, *ENDLESS)

    def delete():
        assert requests.delete(f"{base}/chats/delete/{chat_id}", timeout=10).status_code == 200

    events = read_events_acting(infer(base, chat_id, f"max_tokens=400&{GREEDY}"), 3, delete)
    assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == 404
    assert len(events) < 40  # the generation stopped with the deletion, not at max_tokens
    assert requests.get(f"{base}/conversations/{events[0]['data']['message_id']}", timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("max_tokens=0", "max_tokens"),
        ("max_tokens=abc", "max_tokens"),
        ("max_tokens=4000", "max_tokens"),
        ("temperature=-1", "temperature"),
        ("temperature=3", "temperature"),
        ("top_p=0", "top_p"),
        ("top_p=1.5", "top_p"),
        ("seed=-1", "seed"),
    ],
)
@STREAM_ROUTES
def test_bad_options_are_422_before_any_stream(inference_server, client, query, field, route):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    response = requests.get(infer(base, chat_id, query, route), timeout=10)
    assert response.status_code == 422 and response.headers["Content-Type"] == "application/json"
    assert field in response.json()["errors"]
    assert len(history(base, chat_id)) == 1


@STREAM_ROUTES
def test_unknown_chat_404_and_no_human_message_409(inference_server, client, route):
    base = inference_server
    for ident in (str(uuid.uuid4()), "nope"):
        response = requests.get(infer(base, ident, route=route), timeout=10)
        assert response.status_code == 404 and response.json()["code"] == 404
    empty = new_chat(base)
    assistant_only = new_chat(base, "Hello, I am the assistant.", roles=("Assistant",))
    for chat_id in (empty, assistant_only):
        response = requests.get(infer(base, chat_id, route=route), timeout=10)
        assert response.status_code == 409 and "Human" in response.json()["message"]
        assert len(history(base, chat_id)) == (chat_id == assistant_only)
    assert requests.post(f"{base}/conversations/stop/{uuid.uuid4()}", timeout=10).status_code == 404


def test_model_that_cannot_load_is_503_with_the_reason(start_server, client, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    base = start_server(ready_status=503, CHATAPI_MODEL_PATH=str(broken)).url
    deadline = time.monotonic() + 30
    while (health := requests.get(f"{base}/health", timeout=10).json())["model"]["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert health["model"]["status"] == "failed" and health["model"]["reason"]
    chat_id = new_chat(base, QUESTION)
    response = requests.get(infer(base, chat_id), timeout=10)
    assert response.status_code == 503 and response.json()["code"] == 503
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).status_code == 200  # the rest still works


def test_concurrent_requests_for_one_chat_make_one_reply(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    results: dict[int, list[dict]] = {}

    def read(n: int) -> None:
        results[n] = read_events(infer(base, chat_id))

    threads = [threading.Thread(target=read, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A request that failed in its thread left no result behind (its exception is only a warning).
    assert sorted(results) == [0, 1, 2]
    assert all(r[0]["event"] == "start" and r[-1]["event"] == "done" for r in results.values())
    assert len({r[0]["data"]["message_id"] for r in results.values()}) == 1
    assert [m["role"] for m in history(base, chat_id)] == ["Human", "Assistant"]


def test_a_client_back_within_the_grace_period_keeps_its_reply(start_server, client):
    """The grace period counts from the moment the last listener left, whatever timers an earlier moment
    started: here the reply's own first timer (at start + 4 s) falls inside the client's absence."""
    base = start_server(CHATAPI_GRACE_SECONDS="4", CHATAPI_PING_SECONDS="0.5").url
    chat_id = new_chat(base, *ENDLESS)
    url = infer(base, chat_id, f"max_tokens=2000&{GREEDY}")
    started = time.monotonic()
    stream = EventStream(url)
    seen = []
    for event in stream:
        seen.append(event)
        if time.monotonic() - started > 3:
            break
    stream.close()  # gone from about 3 s to 5 s
    time.sleep(max(0.0, 5 - (time.monotonic() - started)))
    back = EventStream(url, last_event_id=seen[-1]["id"])
    resumed = [event for _, event in zip(range(5), back, strict=False)]
    back.close()
    assert [e["event"] for e in resumed] == ["message"] * 5, resumed
    # Still being generated at about 5 s: the stop route finds it running (a grace cancel would have ended it).
    assert requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10).json()["stopped"] is True


# A reply held to a JSON Schema (issue 25): `?schema=` (a JSON Schema as JSON text), `?format=json` (any object).
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"enum": ["France", "Italy"]}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def test_a_reply_held_to_a_schema_validates_as_streamed_and_as_saved(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    query = urlencode({"schema": json.dumps(CITY), "max_tokens": 48, "temperature": 0.7, "seed": 5})
    events = read_events(infer(base, chat_id, query))
    done = events[-1]
    assert done["event"] == "done" and done["data"]["finish_reason"] == "stop", events
    saved = done["data"]["message"]["message"]
    jsonschema.validate(json.loads(saved), CITY)
    assert json.loads(pieces(events)) == json.loads(saved)
    # Any JSON object: the next reply, asked again.
    again = {"format": "json", "max_tokens": 48, "replace": done["data"]["message"]["id"], "temperature": 0}
    events = read_events(infer(base, chat_id, urlencode(again)))
    done = events[-1]["data"]
    assert pieces(events).lstrip().startswith("{")
    if done["finish_reason"] == "stop":
        assert isinstance(json.loads(done["message"]["message"]), dict)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"schema": json.dumps({"type": "integer", "minimum": 1})}, "schema"),  # not enforced: refused
        ({"schema": "{not json"}, "schema"),
        ({"format": "text", "schema": "{}"}, "schema"),
        ({"format": "xml"}, "format"),
        ({"schema": "x" * 2_601}, "schema"),  # what a request line holds URL-encoded, in the query
    ],
)
def test_a_schema_the_grammar_cannot_enforce_is_a_422_before_any_reply(inference_server, client, query, field):
    base = inference_server
    chat_id = new_chat(base, QUESTION)
    response = requests.get(infer(base, chat_id, urlencode({**query, "max_tokens": 8})), timeout=30)
    assert response.status_code == 422 and field in response.json()["errors"], response.text
    assert len(history(base, chat_id)) == 1  # nothing answered, nothing saved

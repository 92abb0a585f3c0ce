"""Several replies at once (continuous batching, CHATAPI_PARALLEL=4), against the real server and model.

Concurrency is shown by the order in which events arrive at the clients, never by timing: four replies
made one after another would deliver each reply's `done` before the next one's first token.
"""

import requests

from tests.support import wait_for
from tests.support.chats import ENDLESS, GREEDY, QUESTION, add_message, history, infer, new_chat, pieces
from tests.support.sse import Arrivals, EventStream, read_events

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "How many legs does a spider have?",
    "What do bees make?",
]


def ended(arrivals: Arrivals, name: str) -> bool:
    events = arrivals.events(name)
    return bool(events) and events[-1]["event"] in ("done", "error")


def test_four_replies_stream_at_once_and_each_is_saved(inference_server, client):
    base = inference_server
    chats = {f"reply {n}": new_chat(base, *ENDLESS) for n in range(4)}
    arrivals = Arrivals()
    for name, chat_id in chats.items():
        arrivals.read(name, EventStream(infer(base, chat_id, f"max_tokens=48&{GREEDY}")))
    arrivals.join()
    for name, chat_id in chats.items():
        events = arrivals.events(name)
        assert "queued" not in [e["event"] for e in events]
        done = events[-1]["data"]
        assert done["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 48
        assert done["message"]["message"] == pieces(events).strip() == history(base, chat_id)[-1]["message"]
    # Every reply had started streaming before any of them ended.
    last_first_token = max(arrivals.first(name, "message") for name in chats)
    first_done = min(arrivals.first(name, "done") for name in chats)
    assert last_first_token < first_done


def test_distinct_chats_asked_together_answer_as_each_asked_alone(inference_server, client):
    """Isolation: a reply that saw another chat's tokens would differ from the same chat's reply made alone.

    Each question is asked twice in chats of its own: alone first, then all four together. Both runs read
    their prompts whole (only the shared system prompt can come from the cache, in both runs), so at
    temperature 0 the same prompt must give the same reply whether or not other sequences share the batch.
    """
    base = inference_server
    query = f"max_tokens=32&{GREEDY}"
    alone = [read_events(infer(base, new_chat(base, q), query))[-1]["data"] for q in QUESTIONS]
    arrivals = Arrivals()
    for n, question in enumerate(QUESTIONS):
        arrivals.read(str(n), EventStream(infer(base, new_chat(base, question), query)))
    arrivals.join()
    assert [arrivals.events(str(n))[-1]["event"] for n in range(len(QUESTIONS))] == ["done"] * len(QUESTIONS)
    together = [arrivals.events(str(n))[-1]["data"] for n in range(len(QUESTIONS))]
    assert [d["message"]["message"] for d in together] == [d["message"]["message"] for d in alone]
    assert len({d["message"]["message"] for d in alone}) == len(QUESTIONS)  # four different answers
    assert [d["usage"]["prompt_tokens"] for d in together] == [d["usage"]["prompt_tokens"] for d in alone]


def test_a_stop_and_a_disconnect_in_a_batch_free_their_places(inference_server, client):
    base = inference_server
    chats = [new_chat(base, *ENDLESS) for _ in range(4)]
    streams = [EventStream(infer(base, chat_id, f"max_tokens=1000&{GREEDY}")) for chat_id in chats]
    readers = [iter(stream) for stream in streams]
    for reader in readers:  # all four generating
        assert next(reader)["event"] == "start" and next(reader)["event"] == "message"
    stopped = requests.post(f"{base}/conversations/stop/{chats[0]}", timeout=10)
    assert stopped.json()["stopped"] is True
    streams[1].close()  # this client goes away
    assert list(readers[0])[-1]["data"]["finish_reason"] == "cancelled"
    # Two new replies get the two places at once: no `queued` event, while the others still run.
    arrivals = Arrivals()
    wait_until_running(base, 2)
    for n in range(2):
        arrivals.read(f"new {n}", EventStream(infer(base, new_chat(base, QUESTION))))
    arrivals.join()
    for n in range(2):
        kinds = [e["event"] for e in arrivals.events(f"new {n}")]
        assert "queued" not in kinds and kinds[-1] == "done"
    for chat_id in chats[2:]:
        requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    for reader in readers[2:]:
        done = list(reader)[-1]["data"]
        assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] > 1


def wait_until_running(base: str, count: int) -> None:
    """Until /health counts `count` running replies and none waiting (a disconnect takes a grace period)."""
    expected = {"running": count, "waiting": 0}
    wait_for(lambda: requests.get(f"{base}/health", timeout=10).json()["model"]["replies"] == expected)


def test_a_fifth_request_waits_and_starts_when_a_place_frees(inference_server, client):
    base = inference_server
    arrivals = Arrivals()
    arrivals.read("short", EventStream(infer(base, new_chat(base, *ENDLESS), f"max_tokens=24&{GREEDY}")))
    long_chats = [new_chat(base, *ENDLESS) for _ in range(3)]
    for n, chat_id in enumerate(long_chats):
        arrivals.read(f"long {n}", EventStream(infer(base, chat_id, f"max_tokens=400&{GREEDY}")))
    fifth = EventStream(infer(base, new_chat(base, QUESTION)))
    arrivals.read("fifth", fifth)
    # The fifth's `queued` event went out before its stream was returned: read in its thread, it arrives first.
    wait_for(lambda: len(arrivals.events("fifth")) >= 2)
    assert [e["event"] for e in arrivals.events("fifth")[:2]] == ["start", "queued"]
    assert arrivals.events("fifth")[1]["data"] == {"position": 1}
    wait_for(lambda: ended(arrivals, "fifth"))
    for chat_id in long_chats:
        requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    arrivals.join()
    # It started when the short reply ended, and ended while the long ones still ran.
    assert arrivals.first("short", "done") < arrivals.first("fifth", "message")
    assert all(arrivals.first("fifth", "done") < arrivals.first(f"long {n}", "done") for n in range(3))
    assert all(arrivals.events(f"long {n}")[-1]["data"]["finish_reason"] == "cancelled" for n in range(3))


def test_a_long_prompt_is_read_in_chunks_while_a_reply_streams(inference_server, client):
    base = inference_server
    arrivals = Arrivals()
    running = new_chat(base, *ENDLESS)
    arrivals.read("running", EventStream(infer(base, running, f"max_tokens=1000&{GREEDY}")))
    wait_for(lambda: len(arrivals.events("running")) >= 3)
    long_prompt = new_chat(base, "Please summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 220)
    arrivals.read("long", EventStream(infer(base, long_prompt, f"max_tokens=8&{GREEDY}")))
    wait_for(lambda: ended(arrivals, "long"))
    requests.post(f"{base}/conversations/stop/{running}", timeout=10)
    arrivals.join()
    long_done = arrivals.events("long")[-1]["data"]
    assert long_done["usage"]["prompt_tokens"] - long_done["usage"]["cached_tokens"] > 2000
    # While the ~2,000-token prompt was read (its start to its first token), the running reply kept going:
    # read in one piece it would have stalled the reply for the whole prompt, between two of its tokens.
    start, first_token = arrivals.first("long", "start"), arrivals.first("long", "message")
    tokens_meanwhile = [e for who, e in arrivals.log[start:first_token] if who == "running" and e["event"] == "message"]
    assert len(tokens_meanwhile) >= 4


def test_a_follow_up_reads_only_its_new_tokens_while_other_chats_generate(inference_server, client):
    base = inference_server
    chat_id = new_chat(base, "My name is Ada. Remember it.")
    first = read_events(infer(base, chat_id))[-1]["data"]
    busy = [new_chat(base, *ENDLESS) for _ in range(3)]
    streams = [EventStream(infer(base, other, f"max_tokens=1000&{GREEDY}")) for other in busy]
    readers = [iter(stream) for stream in streams]
    for reader in readers:
        assert [next(reader)["event"], next(reader)["event"]] == ["start", "message"]
    add_message(base, chat_id, "What is my name?")
    second = read_events(infer(base, chat_id))[-1]["data"]
    for other in busy:
        requests.post(f"{base}/conversations/stop/{other}", timeout=10)
    assert all(list(reader)[-1]["data"]["finish_reason"] == "cancelled" for reader in readers)
    # Everything up to the end of the first reply was still in the chat's own cache.
    assert second["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert second["usage"]["prompt_tokens"] - second["usage"]["cached_tokens"] < 30

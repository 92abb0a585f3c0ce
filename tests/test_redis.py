"""CHATAPI_REDIS_URL: replies shared by several processes through the Redis at 127.0.0.1:6379. Two real servers
(gunicorn, each with the real model in its own process, as two boxes would run it) share one database and one key
prefix of this run's own: a reply started on one is resumed, joined and stopped through the other, a chat has one
reply at a time across both, a listener on one keeps the other's reply going, and a process that dies lets go of
its chats within the lease. The deployment behind nginx with a remote model server is tests/test_deployment.py.

PostgreSQL only (conftest.POSTGRESQL_ONLY): the database is what several hosts would share."""

import json
import threading
import time
import uuid

import gevent
import pytest
import redis
import requests

from chatapi import create_app, people
from chatapi.extensions import db
from chatapi.llm.engine import Options
from chatapi.llm.redis_replies import Board, SharedReply
from chatapi.llm.reply import Reply, ReplyRequest
from tests.support import wait_for
from tests.support.chats import ENDLESS, QUESTION, history, new_chat, pieces
from tests.support.scratch import REDIS_URL, forget_keys
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.sse import EventStream, read_events, read_events_acting

LEASE_SECONDS = 2
TTL_SECONDS = 120
LONG = "max_tokens=2000&temperature=0"
SHORT = "max_tokens=48&temperature=0"


@pytest.fixture(scope="module")
def redis_prefix():
    """A key prefix of this module's own; its keys are deleted afterwards."""
    prefix = f"chatapi-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    forget_keys(prefix)


def shared_settings(prefix: str) -> dict:
    return {
        **FAST_STREAM_SETTINGS,
        "CHATAPI_REDIS_URL": REDIS_URL,
        "CHATAPI_REDIS_PREFIX": prefix,
        "CHATAPI_REDIS_LEASE_SECONDS": str(LEASE_SECONDS),
        "CHATAPI_REDIS_TTL_SECONDS": str(TTL_SECONDS),
        "CHATAPI_N_THREADS": "1",  # two models on two cores
    }


def start_pair(database_url: str, directory, prefix: str) -> list[Server]:
    """Two processes as on two hosts: each keeps chats' KV states in a folder of its own."""
    servers = [
        Server(database_url, directory / f"gunicorn-{name}.log", CHATAPI_KV_DIR=str(directory / f"kv-{name}"),
               **shared_settings(prefix))
        for name in "ab"
    ]
    for server in servers:
        server.wait_until_up()
    return servers


@pytest.fixture(scope="module")
def pair_directory(tmp_path_factory):
    return tmp_path_factory.mktemp("pair")


@pytest.fixture(scope="module")
def pair(app, database_url, redis_prefix, pair_directory):
    """Two servers sharing the database and the Redis prefix: their base URLs."""
    servers = start_pair(database_url, pair_directory, redis_prefix)
    yield [server.url for server in servers]
    for server in servers:
        server.stop()


def stream_url(base: str, chat_id: str, query: str = SHORT) -> str:
    return f"{base}/conversations/inference/{chat_id}?{query}"


def keys_of(prefix: str) -> dict[str, int]:
    """The prefix's keys and their TTLs in seconds (-1: none)."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    return {key: client.ttl(key) for key in client.scan_iter(f"{prefix}*")}


def test_a_reply_started_on_one_process_is_resumed_on_the_other(pair):
    """Last-Event-ID on B picks up after the last event the client got from A: nothing repeated, nothing
    missing, to `done`, and the text is what was saved."""
    a, b = pair
    chat_id = new_chat(a, *ENDLESS)
    stream = EventStream(stream_url(a, chat_id))
    events = iter(stream)
    head = [next(events) for _ in range(5)]
    stream.close()
    rest = read_events(stream_url(b, chat_id), last_event_id=head[-1]["id"])
    everything = head + rest
    message_id = head[0]["data"]["message_id"]
    assert [event["id"] for event in everything] == [f"{message_id}.{n}" for n in range(len(everything))]
    assert everything[-1]["event"] == "done" and everything[-1]["data"]["finish_reason"] == "length"
    saved = history(b, chat_id)[-1]
    assert saved["id"] == message_id and saved["message"] == pieces(everything).strip()
    # Fully delivered: a reconnect to either gets 204, and starts nothing.
    for base in (a, b):
        last = requests.get(stream_url(base, chat_id), headers={"Last-Event-ID": everything[-1]["id"]}, timeout=10)
        assert last.status_code == 204
    assert len(history(a, chat_id)) == len(ENDLESS) + 1


def test_a_second_request_on_the_other_process_joins_the_reply(pair):
    """One reply at a time per chat across processes: A's and B's requests for the chat stream the same reply
    (the same message id, the same text) and one Assistant message is saved."""
    a, b = pair
    chat_id = new_chat(a, *ENDLESS)
    first = EventStream(stream_url(a, chat_id))
    events = iter(first)
    start = next(events)
    joined = read_events(stream_url(b, chat_id, LONG))  # its options are ignored: it joins
    rest = list(events)
    first.close()
    assert joined[0]["event"] == "start" and joined[0]["data"]["message_id"] == start["data"]["message_id"]
    assert joined[-1]["event"] == "done" and rest[-1]["event"] == "done"
    assert pieces(joined) == pieces([start, *rest])
    assert [m["role"] for m in history(b, chat_id)] == ["Human", "Assistant", "Human", "Assistant"]


def test_requests_at_once_on_both_processes_start_one_reply(pair):
    """Both processes asked at the same moment: one reply, whichever took the chat's lock."""
    a, b = pair
    chat_id = new_chat(a, QUESTION, roles=("Human",))
    results: dict[str, list[dict]] = {}
    barrier = threading.Barrier(2)

    def ask(base: str) -> None:
        barrier.wait()
        results[base] = read_events(stream_url(base, chat_id))

    threads = [threading.Thread(target=ask, args=(base,)) for base in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    starts = {results[base][0]["data"]["message_id"] for base in (a, b)}
    assert len(starts) == 1
    assert all(results[base][-1]["event"] == "done" for base in (a, b))
    assert [m["role"] for m in history(a, chat_id)] == ["Human", "Assistant"]


def test_a_chat_held_elsewhere_is_joined_not_answered_again(pair, redis_prefix):
    """The chat's lock decides, not the record of its latest reply: with the lock held by a reply of another process
    that has not written its record yet (here: this test, writing its stream by hand), a request joins that reply's
    stream, and ends when it ends."""
    a, _ = pair
    chat_id = new_chat(a, QUESTION, roles=("Human",))
    message_id = str(uuid.uuid4())
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    stream = f"{redis_prefix}reply:{message_id}:events"
    client.set(f"{redis_prefix}chat:{chat_id}:lock", message_id, px=30_000)
    start = {"chat_id": chat_id, "message_id": message_id, "mode": "local", "truncated": 0}
    client.xadd(stream, {"event": "start", "data": json.dumps(start)}, id="0-1")
    client.xadd(stream, {"event": "", "data": json.dumps({"content": "Paris"})}, id="0-2")
    joined = EventStream(stream_url(a, chat_id))
    events = iter(joined)
    assert [next(events)["data"] for _ in range(2)] == [start, {"content": "Paris"}]
    ended = {"code": 500, "message": "ended elsewhere"}
    client.xadd(stream, {"event": "error", "data": json.dumps(ended)}, id="0-3")
    assert list(events) == [{"id": f"{message_id}.2", "event": "error", "data": ended}]
    joined.close()
    client.delete(f"{redis_prefix}chat:{chat_id}:lock", stream)  # the keys this test wrote by hand
    assert [m["role"] for m in history(a, chat_id)] == ["Human"]  # nothing answered it here


def test_a_reply_is_stopped_through_the_other_process(pair):
    """POST /conversations/stop on B stops the reply A makes: A's stream ends with `done` cancelled, and the part
    written is saved."""
    a, b = pair
    chat_id = new_chat(a, *ENDLESS)
    stopped = []

    def stop() -> None:
        stopped.append(requests.post(f"{b}/conversations/stop/{chat_id}", timeout=10))

    events = read_events_acting(stream_url(a, chat_id, LONG), 6, stop)
    assert stopped[0].json() == {"chat_id": chat_id, "stopped": True}
    done = events[-1]
    assert done["event"] == "done" and done["data"]["finish_reason"] == "cancelled"
    assert done["data"]["usage"]["completion_tokens"] < 2000
    assert history(b, chat_id)[-1]["message"] == pieces(events).strip() == done["data"]["message"]["message"]
    # Nothing is being made for the chat any more, in either process.
    assert requests.post(f"{a}/conversations/stop/{chat_id}", timeout=10).json()["stopped"] is False


def test_a_chat_deleted_through_one_process_loses_its_saved_state_in_the_other(pair, pair_directory):
    a, b = pair
    chat_id = new_chat(a, *ENDLESS)
    assert read_events(stream_url(a, chat_id))[-1]["event"] == "done"
    wait_for(lambda: any((pair_directory / "kv-a").glob(f"*/{chat_id}")), seconds=30, what="A's saved state")
    assert not any((pair_directory / "kv-b").glob(f"*/{chat_id}"))
    assert requests.delete(f"{b}/chats/delete/{chat_id}", timeout=10).status_code == 200
    wait_for(lambda: not any((pair_directory / "kv-a").glob(f"*/{chat_id}")), seconds=30, what="A's state deleted")


def test_another_persons_reply_is_404_on_either_process(pair, app, client):
    """Accounts hold across processes: Bob, on either, can neither join, resume nor stop the reply Alice's chat is
    making on A (404, as for a chat that does not exist), and Alice's reply goes on; Alice stops it through B.
    (`client`: the people are gone afterwards, and the box open again.)"""
    a, b = pair
    with app.app_context():
        alice, bob = people.create_user("alice", "password-a", admin=True), people.create_user("bob", "password-b")
        as_alice, as_bob = ({"Authorization": f"Bearer {people.new_key(person)[1]}"} for person in (alice, bob))
        db.session.commit()
    chat_id = requests.post(f"{a}/chats/create", json={"name": "alice's"}, headers=as_alice, timeout=10).json()["id"]
    for i, message in enumerate(ENDLESS):
        body = {"chat_id": chat_id, "role": ("Human", "Assistant")[i % 2], "message": message}
        assert requests.post(f"{a}/conversations/create", json=body, headers=as_alice, timeout=10).status_code == 201
    stream = EventStream(stream_url(a, chat_id, LONG), headers=as_alice)
    events = iter(stream)
    head = [next(events) for _ in range(3)]
    for base in (a, b):
        joined = requests.get(stream_url(base, chat_id), headers=as_bob, timeout=10)
        resuming = {**as_bob, "Last-Event-ID": head[-1]["id"]}
        resumed = requests.get(stream_url(base, chat_id), headers=resuming, timeout=10)
        stopped = requests.post(f"{base}/conversations/stop/{chat_id}", headers=as_bob, timeout=10)
        assert [joined.status_code, resumed.status_code, stopped.status_code] == [404, 404, 404]
        assert joined.json()["message"] == stopped.json()["message"] == f"chat {chat_id} not found"
    assert next(events)["event"] == "message"  # still going
    assert requests.post(f"{b}/conversations/stop/{chat_id}", headers=as_alice, timeout=10).json()["stopped"] is True
    assert list(events)[-1]["data"]["finish_reason"] == "cancelled"
    stream.close()


def test_a_listener_on_the_other_process_keeps_the_reply_going(pair):
    """The client left A and listens on B: A's grace period (1 s) passes, but B tells A that someone listens, so the
    reply runs to its length instead of being cancelled as unheard."""
    a, b = pair
    chat_id = new_chat(a, *ENDLESS)
    stream = EventStream(stream_url(a, chat_id, "max_tokens=300&temperature=0"))
    head = [event for event, _ in zip(stream, range(3), strict=False)]
    stream.close()
    resumed = EventStream(stream_url(b, chat_id), last_event_id=head[-1]["id"])
    rest = list(resumed)
    resumed.close()
    done = rest[-1]
    assert done["event"] == "done", done
    assert done["data"]["finish_reason"] == "length" and done["data"]["timings"]["total_ms"] > 2000


def test_a_reply_nobody_listens_to_is_still_cancelled(pair):
    """The grace period still holds across processes: once nobody listens anywhere, the reply is cancelled."""
    a, b = pair
    chat_id = new_chat(a, *ENDLESS)
    stream = EventStream(stream_url(a, chat_id, LONG))
    head = [event for event, _ in zip(stream, range(3), strict=False)]
    stream.close()
    resumed = EventStream(stream_url(b, chat_id), last_event_id=head[-1]["id"])
    next(iter(resumed))
    resumed.close()
    wait_for(lambda: history(a, chat_id)[-1]["role"] == "Assistant", 60, "the cancelled reply saved")
    assert len(history(a, chat_id)[-1]["message"]) > 0
    assert requests.post(f"{b}/conversations/stop/{chat_id}", timeout=10).json()["stopped"] is False


def test_a_finished_reply_leaves_keys_that_expire(pair, redis_prefix):
    """After a reply: its stream and the chat's record carry a TTL, the chat's lock is gone, all under the prefix."""
    a, _ = pair
    chat_id = new_chat(a, QUESTION, roles=("Human",))
    events = read_events(stream_url(a, chat_id))
    message_id = events[0]["data"]["message_id"]
    wait_for(lambda: f"{redis_prefix}chat:{chat_id}:lock" not in keys_of(redis_prefix), 10, "the chat let go")
    keys = keys_of(redis_prefix)
    stream, record = f"{redis_prefix}reply:{message_id}:events", f"{redis_prefix}chat:{chat_id}:reply"
    assert 0 < keys[stream] <= TTL_SECONDS + 60 and 0 < keys[record] <= TTL_SECONDS
    assert not [key for key, ttl in keys.items() if ttl == -1]
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    assert client.xlen(stream) == len(events)
    assert client.xrange(stream, count=1)[0][0] == "0-1"  # event n is entry 0-(n+1)


def test_a_process_that_dies_lets_go_of_its_chat(app, database_url, redis_prefix, tmp_path):
    """A is killed mid-reply (SIGKILL: nothing of its shutdown runs). The client resumes on B: it gets what A had
    published, then, once A's lease has run out, an `error` event (502: the reply's request to the model died
    with A, so nothing more can come and nothing was saved). Then the chat takes a new reply through B."""
    prefix = f"{redis_prefix}dies:"
    a, b = start_pair(database_url, tmp_path, prefix)
    try:
        chat_id = new_chat(a.url, *ENDLESS)
        stream = EventStream(stream_url(a.url, chat_id, LONG))
        head = [event for event, _ in zip(stream, range(6), strict=False)]
        a.kill()
        stream.close()
        killed_at = time.monotonic()
        rest = read_events(stream_url(b.url, chat_id), last_event_id=head[-1]["id"])
        message_id = head[0]["data"]["message_id"]
        ids = [event["id"] for event in head + rest]
        assert ids == [f"{message_id}.{n}" for n in range(len(ids))]  # what A published, then the error
        error = rest[-1]
        assert error["event"] == "error" and error["data"]["code"] == 502, error
        assert "stopped before it finished" in error["data"]["message"]
        assert time.monotonic() - killed_at < LEASE_SECONDS + 10
        assert [m["role"] for m in history(b.url, chat_id)][-1] == "Human"  # nothing saved
        again = read_events(stream_url(b.url, chat_id))
        assert again[-1]["event"] == "done" and again[0]["data"]["message_id"] != message_id
        assert history(b.url, chat_id)[-1]["id"] == again[0]["data"]["message_id"]
    finally:
        a.stop()
        b.stop()


def test_unreachable_redis_is_a_503_not_a_crash(app, database_url, tmp_path):
    """Redis down: /health says so (503 with the reason), a reply cannot start (503 JSON with Retry-After), and
    the chats themselves still work."""
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_REDIS_URL": "redis://127.0.0.1:1/0"}
    server = Server(database_url, tmp_path / "gunicorn.log", **settings).wait_until_up(ready_status=503)
    try:
        health = requests.get(f"{server.url}/health", timeout=30).json()
        assert health["redis"] == "unreachable" and "Redis is unreachable" in health["reason"]
        chat_id = new_chat(server.url, QUESTION, roles=("Human",))
        response = requests.get(stream_url(server.url, chat_id), timeout=30)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json()["message"] == "Redis is unavailable"  # why (its address) goes to the log
        assert [m["role"] for m in history(server.url, chat_id)] == ["Human"]
    finally:
        server.stop()


class SlowRedis(redis.Redis):
    """Redis on a slow network: each round trip of a pipeline first gives way to other greenlets for 20 ms, as a
    gevent worker's socket does while it waits."""

    def pipeline(self, *args, **kwargs):
        pipe = super().pipeline(*args, **kwargs)
        execute = pipe.execute

        def slow_execute(*args, **kwargs):
            gevent.sleep(0.02)
            return execute(*args, **kwargs)

        pipe.execute = slow_execute
        return pipe


def test_the_end_is_in_redis_and_the_chat_free_before_a_listener_here_hears_of_it(redis_prefix):
    """The maker's own listener must not see `done` before Redis does: its client may ask another process for the
    next reply at once, which must find this one over and the chat free (not join the old reply again)."""
    board = Board(REDIS_URL, f"{redis_prefix}order:", lease=5, ttl=60, grace=1, ping=1)
    board.redis = SlowRedis.from_url(REDIS_URL, protocol=2, decode_responses=True)
    board._listen_for_stops = lambda: None  # its blocking poll would hold this unpatched process
    chat_id = uuid.uuid4()
    request = ReplyRequest(chat_id, "local", (), "", Options(8, 0.0, 1.0, 1), lambda reply: None, uuid.uuid4())
    reply = Reply(request, 1, 10, on_unheard=lambda reply: None)
    assert board.claim(reply) is None
    reply.publish("start", {"chat_id": str(chat_id), "message_id": str(reply.message_id)})
    reply.add_text("Paris")
    heard = []

    def listen() -> None:
        for text in reply.listen():
            if "event: done" in text:
                record = board.redis.hgetall(board.record_key(chat_id))
                holder = board.holder(chat_id)
                heard.append((holder, SharedReply(board, chat_id, record, holder).finished))

    listener = gevent.spawn(listen)
    gevent.sleep(0.2)
    reply.finish("done", {"message": None})
    listener.join(5)
    assert heard == [(None, True)]


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("CHATAPI_REDIS_URL", "http://127.0.0.1:6379", "must be a redis://"),
        ("CHATAPI_REDIS_LEASE_SECONDS", 0, "must be more than 0 seconds"),
        ("CHATAPI_REDIS_TTL_SECONDS", -5, "must be more than 0 seconds"),
    ],
)
def test_settings_that_cannot_work_stop_the_app(database_url, setting, value, message):
    with pytest.raises(ValueError, match=message):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_REDIS_URL": REDIS_URL, setting: value})

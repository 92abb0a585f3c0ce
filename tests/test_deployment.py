"""chatapi deployed on several processes (issue 13, docs/deploy.md): llama_cpp.server on the bundled GGUF, two
chatapi instances on the remote backend sharing PostgreSQL and Redis, nginx in front with deploy/nginx.conf
(tests/support/deployment.py). A reply started on one instance is resumed, stopped and, when its instance dies,
ended cleanly through the other.

A SIGKILLed instance takes its request to the model server with it: nobody can continue that reply, so a client
that resumes it gets what had been published, then an `error` event once the dead instance's lease on the chat
has expired (CHATAPI_REDIS_LEASE_SECONDS, 2 here), and nothing is saved.

PostgreSQL only (conftest.POSTGRES_ONLY): several processes share a database that way."""

import re

import pytest
import requests

from tests.support import wait_for
from tests.support.chats import ENDLESS, QUESTION, history, infer, new_chat, pieces
from tests.support.deployment import Deployment
from tests.support.sse import Arrivals, EventStream, read_events, read_events_acting

LEASE_SECONDS = 2


@pytest.fixture(scope="module")
def deployment(app, database_url, tmp_path_factory):
    directory = tmp_path_factory.mktemp("deployment")
    with Deployment(directory, database_url, CHATAPI_REDIS_LEASE_SECONDS=str(LEASE_SECONDS)) as running:
        yield running


def ids(events: list[dict]) -> list[str]:
    return [event["id"] for event in events]


def numbered(message_id: str, start: int, count: int) -> list[str]:
    return [f"{message_id}.{n}" for n in range(start, start + count)]


def read_until_cut(stream: EventStream) -> list[dict]:
    """The events of a stream until it ends or breaks (its instance died), as a browser's EventSource gets them."""
    events = []
    try:
        for event in stream:
            events.append(event)
    except requests.RequestException:
        pass
    finally:
        stream.close()
    return events


def first_events(url: str, count: int, last_event_id: str | None = None) -> list[dict]:
    """The stream's first `count` events, then the connection dropped."""
    stream = EventStream(url, last_event_id)
    assert stream.response.status_code == 200, stream.response.text
    iterator = iter(stream)
    try:
        return [next(iterator) for _ in range(count)]
    finally:
        stream.close()


def test_a_reply_stopped_through_another_instance_ends_cancelled_and_its_part_is_saved(deployment, client):
    a, b = deployment.instances
    chat_id = new_chat(a.url, *ENDLESS)
    stopped = []

    def stop_through_b() -> None:
        stopped.append(requests.post(f"{b.url}/conversations/stop/{chat_id}", timeout=10).json())

    events = read_events_acting(infer(a.url, chat_id, "max_tokens=1000&temperature=0"), 8, stop_through_b)
    assert stopped == [{"chat_id": chat_id, "stopped": True}], deployment.logs()
    done = events[-1]
    assert done["event"] == "done" and done["data"]["finish_reason"] == "cancelled", events[-3:]
    text = pieces(events).strip()
    assert text and done["data"]["message"]["message"] == text
    assert len(events) < 200  # stopped, not run to its 1,000 tokens
    for instance in (a, b):
        assert history(instance.url, chat_id)[-1] == done["data"]["message"]


def test_an_instance_is_healthy_while_the_model_server_streams_its_reply(deployment, client):
    """llama-cpp-python's server answers GET /models only once the reply it is making is over: /health, which asks
    it, must take the reply's data as the server's answer instead of saying for as long as it streams (and a
    load balancer's health check with it) that the server does not answer."""
    a, _ = deployment.instances
    chat_id = new_chat(a.url, *ENDLESS)
    healths = []

    def check_health() -> None:
        healths.append(requests.get(f"{a.url}/health", timeout=30))
        requests.post(f"{a.url}/conversations/stop/{chat_id}", timeout=10)

    events = read_events_acting(infer(a.url, chat_id, "max_tokens=1000&temperature=0"), 6, check_health)
    assert events[-1]["event"] == "done" and events[-1]["data"]["finish_reason"] == "cancelled", events[-1]
    health = healths[0]
    assert health.status_code == 200, health.text
    assert health.json()["model"]["status"] == "ok" and health.json()["model"]["replies"]["running"] == 1


def test_through_nginx_the_pages_origin_is_served_and_a_foreign_host_is_not(deployment, client):
    """The instances check the Host nginx was asked for (it passes it on, and CHATAPI_TRUST_PROXY believes its
    X-Forwarded-Host and -Port), so the page's own origin is this server's and a rebound name is refused."""
    base = deployment.url
    for page in ({"Origin": base}, {"Origin": base, "Sec-Fetch-Site": "same-origin"}):
        created = requests.post(f"{base}/chats/create", json={"name": "from the page"}, headers=page, timeout=30)
        assert created.status_code == 201, created.text
    elsewhere = requests.post(f"{base}/chats/create", json={"name": "x"}, headers={"Origin": "http://evil.example"},
                              timeout=30)
    assert elsewhere.status_code == 403
    rebound = requests.get(f"{base}/chats/", headers={"Host": f"rebind.test:{deployment.nginx.port}"}, timeout=30)
    assert rebound.status_code == 403 and "host name" in rebound.json()["message"]
    # A client cannot claim a name of the machine's: nginx sets X-Forwarded-Host from the Host it was asked for.
    claimed = {"Host": "rebind.test", "X-Forwarded-Host": "127.0.0.1"}
    assert requests.get(f"{base}/chats/", headers=claimed, timeout=30).status_code == 403


def test_a_reply_started_on_one_instance_is_resumed_on_the_other_with_last_event_id(deployment, client):
    a, b = deployment.instances
    chat_id = new_chat(a.url, *ENDLESS)
    url = infer(a.url, chat_id, "max_tokens=48&temperature=0")
    seen = first_events(url, 5)
    rest = read_events(url.replace(a.url, b.url), last_event_id=seen[-1]["id"])
    message_id = seen[0]["data"]["message_id"]
    # Every event once, in order: the ones after Last-Event-ID, none repeated, none missing, to `done`.
    assert ids(seen + rest) == numbered(message_id, 0, len(seen) + len(rest)), rest[:3]
    assert rest[-1]["event"] == "done" and rest[-1]["data"]["finish_reason"] == "length", rest[-1]
    text = pieces(seen + rest).strip()
    assert rest[-1]["data"]["message"]["message"] == text
    assert history(b.url, chat_id)[-1]["message"] == text and history(b.url, chat_id)[-1]["id"] == message_id


def test_four_clients_stream_at_once_through_nginx_from_both_instances(deployment, client):
    base = deployment.url
    chats = [new_chat(base, f"{QUESTION} ({n})") for n in range(4)]
    arrivals = Arrivals()
    for chat_id in chats:
        stream = EventStream(infer(base, chat_id, "max_tokens=16&temperature=0"))
        assert stream.response.status_code == 200, stream.response.text
        arrivals.read(chat_id, stream)
    arrivals.join()
    for chat_id in chats:
        events = arrivals.events(chat_id)
        assert events[0]["event"] == "start" and events[-1]["event"] == "done", (events[-1], deployment.logs())
        assert events[-1]["data"]["message"]["message"] == pieces(events).strip()
        assert history(base, chat_id)[-1] == events[-1]["data"]["message"]
    served = {
        entry["upstream"]
        for entry in deployment.nginx.access_log()
        if entry["uri"].startswith("/conversations/inference/") and entry["uri"].split("/")[3].split("?")[0] in chats
    }
    assert served == {f"127.0.0.1:{instance.port}" for instance in deployment.instances}  # round robin


# Last: it kills an instance, which nginx then leaves out for a while (fail_timeout) even once restarted.
def test_a_reply_whose_instance_dies_ends_with_an_error_on_the_other_and_the_chat_goes_on(deployment, client):
    base = deployment.url
    chat_id = new_chat(base, *ENDLESS)
    url = infer(base, chat_id, "max_tokens=1000&temperature=0")
    # The browser's stream through nginx: 5 events, then its connection drops.
    seen = first_events(url, 5)
    message_id = seen[0]["data"]["message_id"]
    making = deployment.making_replies()
    assert len(making) == 1, deployment.logs()
    dying = making[0]
    survivor = next(instance for instance in deployment.instances if instance is not dying)
    # A witness on the dying instance itself joins the reply, to know that it has gone on past what the browser
    # got; then the instance is killed under it.
    witness = EventStream(infer(dying.url, chat_id, "max_tokens=1000&temperature=0"))
    published = []
    for event in witness:
        published.append(event)
        if len(published) == 20:
            break
    assert ids(published) == numbered(message_id, 0, 20)
    try:
        dying.kill()
        published += read_until_cut(witness)

        # The browser reconnects through nginx, which skips the dead instance.
        resumed = read_events(url, last_event_id=seen[-1]["id"])
        *replayed, error = resumed
        # What it missed, as published before the death (at least what the witness saw), then a clean error.
        assert ids(replayed) == numbered(message_id, 5, len(replayed)) and len(replayed) >= 15, resumed[:3]
        assert replayed[:15] == published[5:20]
        assert {event["event"] for event in replayed} == {"message"}
        assert error["event"] == "error" and error["data"]["code"] == 502, error
        assert re.search(r"process.*stopped|stopped.*process", error["data"]["message"], re.I), error
        last = [entry for entry in deployment.nginx.access_log() if entry["uri"] == url.removeprefix(base)][-1]
        assert last["status"] == 200 and last["upstream"].split(", ")[-1] == f"127.0.0.1:{survivor.port}", last

        # Nothing of the dead reply is saved, and the chat takes a new reply.
        saved = history(base, chat_id)
        assert message_id not in [message["id"] for message in saved] and saved[-1]["role"] == "Human"
        events = read_events(infer(base, chat_id, "max_tokens=8&temperature=0"))
        assert events[0]["event"] == "start" and events[0]["data"]["message_id"] != message_id, events[:2]
        assert events[-1]["event"] == "done", (events[-1], deployment.logs())
        assert history(base, chat_id)[-1] == events[-1]["data"]["message"]
    finally:
        witness.close()
        deployment.restart(deployment.instances.index(dying))


def test_a_share_links_token_never_reaches_nginxs_access_log(deployment, client):
    """deploy/nginx.conf's own access log writes /s/... for the token, in the request line and in a Referer."""
    base = deployment.url
    chat_id = requests.post(f"{base}/chats/create", json={"name": "shared"}, timeout=30).json()["id"]
    made = requests.post(f"{base}/chats/{chat_id}/shares", json={"expires_in": None}, timeout=30)
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    token = url.removeprefix("/s/")
    assert requests.get(f"{base}{url}?format=json", timeout=30).status_code == 200
    assert requests.get(f"{base}/s%2F{token}", timeout=30).status_code == 200
    from_the_page = {"Referer": f"{base}{url}#top"}
    assert requests.get(f"{base}/static/favicon.svg", headers=from_the_page, timeout=30).status_code == 200
    assert requests.get(f"{base}/chats/{chat_id}", timeout=30).status_code == 200  # the last request

    wait_for(lambda: f"GET /chats/{chat_id} " in deployment.nginx.redacted_log(), 10, "nginx's last line")
    log = deployment.nginx.redacted_log()
    assert token not in log and token[:12] not in log
    assert '"GET /s/...?format=json HTTP/1.1" 200' in log and '"GET /s%2F... HTTP/1.1" 200' in log
    assert f'"{base}/s/...#top"' in log  # the Referer

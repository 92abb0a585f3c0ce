"""Usage per person (chatapi/usage.py): each person's tokens and replies per UTC day, recorded as their replies end
on both APIs, shown by GET /me/usage and (admins) GET /users/<id>/usage, counted in /metrics by person; the daily
quota CHATAPI_DAILY_TOKENS. Against the real server and model, two people with keys of their own."""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa
from prometheus_client import generate_latest

from chatapi import people, usage
from chatapi.extensions import db
from chatapi.metrics import MAX_PEOPLE_LABELS, OTHER_PEOPLE, Metrics
from tests.support import wait_for
from tests.support.chats import GREEDY, QUESTION
from tests.support.metrics import moved, samples_of, value
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.sse import EventStream

ADMIN_KEY = "usage-admin-" + uuid.uuid4().hex  # CHATAPI_API_KEYS: accounts on, this key the admin `admin`
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
QUOTA = 5000  # CHATAPI_DAILY_TOKENS of the module's server: far above what a test's few short replies use
PASSWORD = "correct horse battery staple"
ASK = [{"role": "user", "content": QUESTION}]


@dataclass(frozen=True)
class Someone:
    id: int
    name: str
    key: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


def make_person(app, name: str) -> Someone:
    """A person with a key of their own, named `name` and a suffix of the test's own (the metrics outlive a test)."""
    with app.app_context():
        user = people.create_user(f"{name}-{uuid.uuid4().hex[:8]}", PASSWORD)
        db.session.flush()
        _, key = people.new_key(user, "tests")
        db.session.commit()
        person = Someone(user.id, user.name, key)
        db.session.remove()
    return person


def seed(app, person: Someone, day, prompt_tokens: int, completion_tokens: int = 0) -> None:
    """Usage recorded on a day, as a reply that ended then would have."""
    with app.app_context():
        usage.add(person.id, day, prompt_tokens, completion_tokens)
        db.session.commit()
        db.session.remove()


@pytest.fixture(scope="module")
def usage_server(app, database_url, tmp_path_factory):
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_API_KEYS": ADMIN_KEY, "CHATAPI_DAILY_TOKENS": str(QUOTA)}
    server = Server(database_url, tmp_path_factory.mktemp("usage") / "gunicorn.log", **settings)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(autouse=True)
def left_idle(request):
    """Each test leaves the model idle for the next; then the tables are emptied (the admin, whom asking with
    ADMIN_KEY makes, too)."""
    base = request.getfixturevalue("usage_server") if "usage_server" in request.fixturenames else None
    if base is not None:
        request.getfixturevalue("client")  # set up first, so that its teardown comes after
    yield
    if base is not None:

        def idle() -> bool:
            health = requests.get(f"{base}/health", headers=ADMIN, timeout=10).json()
            return health["model"]["replies"] == {"running": 0, "waiting": 0}

        wait_for(idle, 120, "an idle model")


def chat_reply(base: str, person: Someone, max_tokens: int = 8) -> requests.Response | dict:
    """A reply on the chat API's stream to a new chat of the person's: the `done` event's data, or the response
    when the stream was refused."""
    chat = requests.post(f"{base}/chats/create", json={"name": "usage"}, headers=person.headers, timeout=10)
    assert chat.status_code == 201, chat.text
    chat_id = chat.json()["id"]
    added = requests.post(
        f"{base}/conversations/create",
        json={"chat_id": chat_id, "role": "Human", "message": QUESTION},
        headers=person.headers,
        timeout=10,
    )
    assert added.status_code == 201, added.text
    url = f"{base}/conversations/inference/{chat_id}?max_tokens={max_tokens}&{GREEDY}"
    stream = EventStream(url, headers=person.headers)
    if stream.response.status_code != 200:
        return stream.response  # refused before any stream: an error body, read when asked for
    try:
        events = list(stream)
    finally:
        stream.close()
    assert events[-1]["event"] == "done", events[-1]
    return events[-1]["data"]


def completion(base: str, person: Someone, stream: bool = False) -> requests.Response:
    """A /v1 chat completion (a stream with its usage chunk)."""
    body = {"model": "gemma-3-270m", "messages": ASK, "max_tokens": 8, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return requests.post(f"{base}/v1/chat/completions", json=body, headers=person.headers, timeout=120)


def streamed_usage(response: requests.Response) -> dict:
    """The usage chunk of a /v1 stream."""
    assert response.status_code == 200, response.text
    chunks = [json.loads(e[len("data: ") :]) for e in response.text.split("\n\n") if e.startswith("data: {")]
    return chunks[-1]["usage"]


def usage_of(base: str, headers: dict, path: str = "/me/usage", **query) -> dict:
    response = requests.get(f"{base}{path}", params=query, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def scrape(base: str) -> dict:
    """/metrics, which asks for a key on a server with keys."""
    response = requests.get(f"{base}/metrics", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return samples_of(response.text)


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def counted_today(base: str, person: Someone) -> dict:
    """The person's usage today as /me/usage shows it, without the day."""
    days = usage_of(base, person.headers)["days"]
    if not days or days[0]["day"] != today():
        return {"prompt_tokens": 0, "completion_tokens": 0, "replies": 0}
    return {name: count for name, count in days[0].items() if name != "day"}


def wait_for_replies(base: str, person: Someone, replies: int) -> dict:
    """The person's usage today once it counts `replies` (recorded just after each reply's `done`)."""
    wait_for(lambda: counted_today(base, person)["replies"] >= replies, 30, f"{replies} replies recorded")
    return counted_today(base, person)


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC) - now).total_seconds()


def test_each_persons_replies_count_for_them_only_on_both_apis(usage_server, app, client):
    base = usage_server
    alice, bob = make_person(app, "alice"), make_person(app, "bob")
    before = scrape(base)

    alices = chat_reply(base, alice)["usage"]
    bobs_whole = completion(base, bob)
    assert bobs_whole.status_code == 200, bobs_whole.text
    bobs = [bobs_whole.json()["usage"], streamed_usage(completion(base, bob, stream=True))]
    assert alices["completion_tokens"] > 0 and all(u["completion_tokens"] > 0 for u in bobs)

    assert wait_for_replies(base, alice, 1) == {
        "prompt_tokens": alices["prompt_tokens"],
        "completion_tokens": alices["completion_tokens"],
        "replies": 1,
    }
    assert wait_for_replies(base, bob, 2) == {
        "prompt_tokens": sum(u["prompt_tokens"] for u in bobs),
        "completion_tokens": sum(u["completion_tokens"] for u in bobs),
        "replies": 2,
    }
    shown = usage_of(base, alice.headers)
    midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time())
    assert shown["daily_tokens"] == QUOTA and shown["resets_at"] == midnight.isoformat(timespec="milliseconds") + "Z"
    assert [day["day"] for day in shown["days"]] == [today()]
    assert usage_of(base, ADMIN)["days"] == []  # the admin (the env key) asked for nothing

    after = scrape(base)
    tokens = "chatapi_person_tokens_total"
    for person, used in ((alice, [alices]), (bob, bobs)):
        for kind in ("prompt", "completion"):
            assert moved(before, after, tokens, person=person.name, kind=kind) == sum(u[f"{kind}_tokens"] for u in used)
    assert moved(before, after, tokens, person="admin", kind="prompt") == 0


def test_admins_read_a_persons_usage_and_nobody_else_does(usage_server, app, client):
    base = usage_server
    alice, bob = make_person(app, "alice"), make_person(app, "bob")
    now = datetime.now(UTC).date()
    seed(app, alice, now, 10, 5)
    seed(app, alice, now, 1, 1)  # a second reply the same day adds up
    seed(app, alice, now - timedelta(days=3), 20, 7)
    seed(app, alice, now - timedelta(days=40), 30, 9)
    seed(app, bob, now, 99, 99)

    def day(delta: int, prompt_tokens: int, completion_tokens: int, replies: int) -> dict:
        when = (now - timedelta(days=delta)).isoformat()
        return {"day": when, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "replies": replies}

    alices = usage_of(base, ADMIN, f"/users/{alice.id}/usage")
    assert alices["days"] == [day(0, 11, 6, 2), day(3, 20, 7, 1)]  # the last 30 days, newest first
    assert alices == usage_of(base, alice.headers)  # as she sees it herself
    assert usage_of(base, ADMIN, f"/users/{alice.id}/usage", days=366)["days"][-1] == day(40, 30, 9, 1)
    assert usage_of(base, ADMIN, f"/users/{alice.id}/usage", days=1)["days"] == [day(0, 11, 6, 2)]
    assert usage_of(base, alice.headers, days=4)["days"] == [day(0, 11, 6, 2), day(3, 20, 7, 1)]
    assert usage_of(base, alice.headers, days=3)["days"] == [day(0, 11, 6, 2)]

    for person in (bob, alice):  # not an admin: not even their own through the admins' route
        refused = requests.get(f"{base}/users/{alice.id}/usage", headers=person.headers, timeout=10)
        assert refused.status_code == 403 and refused.json()["code"] == 403
    for unknown in (bob.id + 1000, 2**63, 10**30):
        assert requests.get(f"{base}/users/{unknown}/usage", headers=ADMIN, timeout=10).status_code == 404
    assert requests.get(f"{base}/me/usage", timeout=10).status_code == 401
    for days in ("0", "367", "x"):
        bad = requests.get(f"{base}/me/usage", params={"days": days}, headers=alice.headers, timeout=10)
        assert bad.status_code == 422 and "days" in bad.json()["errors"], bad.text


def test_usage_is_not_there_while_accounts_are_off(client):
    """Nobody exists and no keys: nobody is asking, nothing is counted, the routes are 404 as GET /me is."""
    for path in ("/me/usage", "/users/1/usage"):
        response = client.get(path)
        assert response.status_code == 404 and response.json["code"] == 404
    document = client.get("/openapi.json").json
    for path in ("/me/usage", "/users/{user_id}/usage"):
        operation = document["paths"][path]["get"]
        assert "200" in operation["responses"] and "404" in operation["responses"]
    assert "403" in document["paths"]["/users/{user_id}/usage"]["get"]["responses"]


def test_a_person_past_the_quota_gets_429_in_each_apis_shape(usage_server, app, client):
    base = usage_server
    alice, bob = make_person(app, "alice"), make_person(app, "bob")
    seed(app, alice, datetime.now(UTC).date(), QUOTA - 1)
    # Under the quota, a reply starts, and runs to its end past it.
    chat_reply(base, alice)
    used = wait_for_replies(base, alice, 2)
    assert used["prompt_tokens"] + used["completion_tokens"] > QUOTA

    refused = chat_reply(base, alice)
    assert isinstance(refused, requests.Response) and refused.status_code == 429, refused
    body = refused.json()
    assert body["code"] == 429 and body["status"] == "Too Many Requests"
    reset = (datetime.now(UTC).date() + timedelta(days=1)).isoformat() + "T00:00:00Z"
    assert reset in body["message"] and str(QUOTA) in body["message"], body
    assert abs(int(refused.headers["Retry-After"]) - seconds_to_midnight()) <= 5

    for stream in (False, True):
        refused = completion(base, alice, stream=stream)
        assert refused.status_code == 429 and refused.headers["Content-Type"] == "application/json", refused.text
        error = refused.json()["error"]
        assert set(refused.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
        assert error["type"] == error["code"] == "insufficient_quota" and error["param"] is None
        assert reset in error["message"]
        assert abs(int(refused.headers["Retry-After"]) - seconds_to_midnight()) <= 5
    assert counted_today(base, alice) == used  # refused requests use nothing

    # Another person is not held back by it.
    assert completion(base, bob).status_code == 200
    assert chat_reply(base, bob)["finish_reason"] in ("stop", "length")
    assert wait_for_replies(base, bob, 2)["replies"] == 2


def test_a_write_that_fails_does_not_fail_the_reply(start_server, app, client):
    server = start_server(**FAST_STREAM_SETTINGS, CHATAPI_API_KEYS=ADMIN_KEY)  # no quota: it would read the table
    base = server.url
    alice = make_person(app, "alice")
    before = scrape(base)
    with app.app_context():  # the table is not there while the replies end: every write fails
        with db.engine.begin() as connection:
            connection.execute(sa.text('ALTER TABLE "usage" RENAME TO usage_away'))
    try:
        done = chat_reply(base, alice)
        assert done["finish_reason"] in ("stop", "length") and done["message"]["message"]
        whole = completion(base, alice)
        assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"]
        wait_for(lambda: server.output().count("could not be recorded") == 2, 30, "two failed writes logged")
    finally:
        with app.app_context():
            with db.engine.begin() as connection:
                connection.execute(sa.text('ALTER TABLE usage_away RENAME TO "usage"'))
            db.engine.dispose()
    assert counted_today(base, alice)["replies"] == 0
    # The metrics count them all the same.
    after = scrape(base)
    prompt = done["usage"]["prompt_tokens"] + whole.json()["usage"]["prompt_tokens"]
    assert moved(before, after, "chatapi_person_tokens_total", person=alice.name, kind="prompt") == prompt


def test_the_person_label_is_bounded(app):
    """People are few, but a label per name would grow without end were they not: past MAX_PEOPLE_LABELS names
    the rest are counted together."""
    metrics = Metrics(app.extensions["replies"])
    for n in range(MAX_PEOPLE_LABELS + 5):
        metrics.count_person_tokens(f"p{n}", {"prompt_tokens": 2, "completion_tokens": None})
    metrics.count_person_tokens("p0", {"prompt_tokens": 1, "completion_tokens": 3})
    samples = samples_of(generate_latest(metrics.registry).decode())
    names = {dict(labels)["person"] for name, labels in samples if name == "chatapi_person_tokens_total"}
    assert len(names) == MAX_PEOPLE_LABELS + 1 and OTHER_PEOPLE in names
    assert value(samples, "chatapi_person_tokens_total", person=OTHER_PEOPLE, kind="prompt") == 10
    assert value(samples, "chatapi_person_tokens_total", person="p0", kind="prompt") == 3
    assert value(samples, "chatapi_person_tokens_total", person="p0", kind="completion") == 3

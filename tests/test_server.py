"""Smoke test of the real server: gunicorn with a gevent worker, over HTTP."""

import os
import subprocess
import sys
import uuid

import pytest
import requests

from tests.support import wait_for
from tests.support.scratch import REDIS_URL
from tests.support.server import ROOT, Server, free_port, migrate


def test_gunicorn_gevent_serves_the_api(live_server):
    created = requests.post(f"{live_server}/chats/create", json={"name": "over http"}, timeout=5)
    assert created.status_code == 201
    chat = created.json()
    assert created.headers["Location"].endswith(f"/chats/{chat['id']}")
    message = requests.post(
        f"{live_server}/conversations/create",
        json={"chat_id": chat["id"], "role": "Human", "message": "hello"},
        timeout=5,
    )
    assert message.status_code == 201
    listed = requests.get(f"{live_server}/chats/", timeout=5)
    assert listed.json()[0]["id"] == chat["id"]
    assert int(listed.headers["X-Total-Count"]) >= 1
    history = requests.get(f"{live_server}/chats/{chat['id']}/conversations", timeout=5).json()
    assert [m["message"] for m in history] == ["hello"]
    missing = requests.get(f"{live_server}/chats/not-a-chat", timeout=5)
    assert missing.status_code == 404 and missing.json()["code"] == 404
    json_type = {"Content-Type": "application/json"}
    bad = requests.post(f"{live_server}/chats/create", data="nope", headers=json_type, timeout=5)
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/json"
    assert requests.get(f"{live_server}/openapi.json", timeout=5).json()["info"]["title"] == "chatapi"
    assert requests.delete(f"{live_server}/chats/delete/{chat['id']}", timeout=5).json()["deleted"] is True


def test_what_gunicorn_refuses_itself_is_a_json_error_too(live_server):
    """Found by fuzzing: a request line over gunicorn's limit got gunicorn's HTML page (gunicorn.conf.py)."""
    response = requests.get(f"{live_server}/chats/?q={'x' * 9000}", timeout=5)  # over limit_request_line (8,190)
    assert response.status_code == 414
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert (body["code"], body["status"]) == (414, "URI Too Long") and "too large" in body["message"]


REMOTE = {"CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": "http://127.0.0.1:9/v1"}
REDIS = {"CHATAPI_REDIS_URL": REDIS_URL}


@pytest.mark.parametrize(
    "settings, reason",
    [
        ({}, "load its own copy of the model"),
        (REDIS, "load its own copy of the model"),
        (REMOTE, "without CHATAPI_REDIS_URL a reply lives in the memory of the worker that started it"),
    ],
    ids=["local", "local with Redis", "remote without Redis"],
)
def test_more_than_one_worker_is_refused_with_the_reason(tmp_path, settings, reason):
    """Each worker would load the model again (local, Redis or not), or hold replies that no other worker can resume
    or stop (remote without Redis): gunicorn.conf.py refuses before anything is served."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), WEB_CONCURRENCY="2", DATABASE_URL=f"sqlite:///{tmp_path}/chatapi.db")
    for name in ("CHATAPI_LLM_BACKEND", "CHATAPI_LLM_URL", "CHATAPI_REDIS_URL"):
        env.pop(name, None)
    env.update(settings)
    command = [sys.executable, "-m", "gunicorn", "wsgi:app"]
    process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert process.returncode != 0
    assert "refusing to start 2 workers (WEB_CONCURRENCY=2)" in process.stderr
    assert reason in process.stderr and "Booting worker" not in process.stderr


def test_several_workers_serve_with_a_remote_model_and_redis(tmp_path):
    """The remote backend with Redis: WEB_CONCURRENCY=2 starts two workers (the model server here is down, so
    /health answers 503 with the reason, from either)."""
    settings = {**REMOTE, **REDIS, "CHATAPI_REDIS_PREFIX": f"chatapi-test-{uuid.uuid4().hex[:8]}:"}
    database_url = f"sqlite:///{tmp_path}/chatapi.db"
    migrate(database_url)  # a database that cannot say whether anyone exists tells a stranger no reason (auth.py)
    server = Server(database_url, tmp_path / "gunicorn.log", WEB_CONCURRENCY="2", **settings)
    try:
        server.wait_until_up(ready_status=503)
        wait_for(lambda: len(server.workers()) == 2, 30, "two workers")
        body = requests.get(f"{server.url}/health", timeout=10).json()
        assert body["redis"] == "ok" and "127.0.0.1:9" in body["reason"]
        assert server.output().count("Booting worker") == 2
    finally:
        server.stop()

"""A full disk (chatapi/disk.py): /health says so rather than ok while every write fails, and a reply that cannot be
saved says why. On a real full filesystem: a small tmpfs of the test's own."""

import os

import psycopg
import requests
from sqlalchemy.exc import OperationalError

from chatapi.disk import is_disk_full
from tests.support.chats import QUESTION, history, infer, new_chat
from tests.support.disk import fill
from tests.support.server import FAST_STREAM_SETTINGS, Server, migrate
from tests.support.sse import read_events

DISK_FULL = "the database's disk is full"


def health(base: str) -> requests.Response:
    return requests.get(f"{base}/health", timeout=10)


def test_a_full_disk_fails_health_and_ends_a_reply_with_a_clear_error(small_disk, tmp_path):
    database_url = f"sqlite:///{small_disk}/chatapi.db"
    migrate(database_url)
    server = Server(database_url, tmp_path / "gunicorn.log", **FAST_STREAM_SETTINGS).wait_until_up()
    try:
        base = server.url
        assert health(base).json()["database"] == "ok"
        chat_id = new_chat(base, QUESTION, roles=("Human",))

        fill(small_disk)
        full = health(base)
        assert full.status_code == 503 and full.json()["status"] == "unavailable"
        assert full.json()["database"] == "disk full" and "KB free" in full.json()["reason"]
        created = requests.post(f"{base}/chats/create", json={"name": "no room"}, timeout=10)
        assert created.status_code == 503 and created.json()["message"] == f"{DISK_FULL}: nothing was saved"
        events = read_events(infer(base, chat_id, "max_tokens=8&temperature=0"))
        assert events[0]["event"] == "start" and events[-1]["event"] == "error"
        assert events[-1]["data"] == {"code": 503, "message": f"{DISK_FULL}: the reply was not saved"}
        assert "database or disk is full" in server.output()  # SQLite's own words: in the log only

        # Room again: the writes that failed still count until one succeeds.
        os.remove(small_disk / "filler")
        assert health(base).json()["database"] == "disk full"
        assert [m["role"] for m in history(base, chat_id)] == ["Human"]
        assert requests.post(f"{base}/chats/create", json={"name": "room"}, timeout=10).status_code == 201
        assert health(base).json()["database"] == "ok"
    finally:
        server.stop()


def test_postgresqls_disk_full_is_known_by_its_sqlstate():
    """PostgreSQL answers a write on a full disk with SQLSTATE 53100 (psycopg's DiskFull): its client has no other
    sign of it."""
    full = OperationalError("INSERT INTO conversations ...", {}, psycopg.errors.DiskFull("could not extend file"))
    assert is_disk_full(full)
    assert not is_disk_full(OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused")))

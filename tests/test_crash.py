"""Crashes: the real server SIGKILLed in the middle of a reply (and of a run of writes), then started again on
the same database. What was saved is all there, byte for byte as the API returned it; the reply being written
is lost, with no trace of it left running; the chat answers again."""

import sqlite3
import threading
from pathlib import Path

import requests

from tests.support import wait_for
from tests.support.chats import ENDLESS, QUESTION, history, infer, new_chat
from tests.support.server import FAST_STREAM_SETTINGS
from tests.support.sse import EventStream, read_events


def everything(base: str) -> dict:
    """Every chat the API lists, each with its conversations."""
    chats = requests.get(f"{base}/chats/", timeout=10).json()
    return {chat["id"]: {"chat": chat, "conversations": history(base, chat["id"])} for chat in chats}


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie waiting for its parent to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Writer(threading.Thread):
    """Adds messages to a chat one after another until the server stops answering; keeps what it was told."""

    def __init__(self, base: str, chat_id: str):
        super().__init__()
        self.base, self.chat_id = base, chat_id
        self.acknowledged: list[dict] = []  # the 201 bodies, in order
        self.refused: list[str] = []  # any other answer

    def run(self) -> None:
        body = {"chat_id": self.chat_id, "role": "Human"}
        for n in range(100_000):
            try:
                response = requests.post(f"{self.base}/conversations/create", json={**body, "message": f"write {n}"})
            except requests.RequestException:  # the server is gone
                return
            if response.status_code != 201:
                self.refused.append(response.text)
                return
            self.acknowledged.append(response.json())


def sqlite_path(database_url: str) -> str | None:
    return database_url.removeprefix("sqlite:///") if database_url.startswith("sqlite") else None


def test_sigkill_in_the_middle_of_a_reply_loses_nothing_saved(start_server, database_url):
    server = start_server(**FAST_STREAM_SETTINGS)
    base = server.url
    answered = new_chat(base, QUESTION)
    assert read_events(infer(base, answered))[-1]["event"] == "done"
    new_chat(base, "one", "two", "three")
    looping = new_chat(base, *ENDLESS)
    burst = new_chat(base)
    saved = everything(base)

    # A long reply, well under way, and messages being written one after another.
    stream = EventStream(infer(base, looping, "max_tokens=1000&temperature=0"))
    events = []
    for event in stream:
        events.append(event)
        if len(events) == 6:  # start and five tokens
            break
    writer = Writer(base, burst)
    writer.start()
    wait_for(lambda: len(writer.acknowledged) >= 5, 60, "some writes")

    workers = server.workers()
    assert workers
    server.kill()
    writer.join(30)
    assert not writer.refused
    stream.close()
    wait_for(lambda: all(gone(pid) for pid in workers), 10, "the worker to die")

    path = sqlite_path(database_url)
    if path:  # as the crash left it, before anything opens it again
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.close()

    base = start_server(**FAST_STREAM_SETTINGS).url
    now = everything(base)
    # Every acknowledged write is there, in order; one more may have been committed as the server died.
    written = now.pop(burst)["conversations"]
    assert written[: len(writer.acknowledged)] == writer.acknowledged
    assert len(written) - len(writer.acknowledged) in (0, 1)
    # The rest is exactly as the API returned it before the crash: the partial reply was not saved.
    saved.pop(burst)
    assert now == saved
    # Replies live in the server's memory only: none is left running, none waits.
    assert requests.get(f"{base}/health", timeout=10).json()["model"]["replies"] == {"running": 0, "waiting": 0}

    # The page's EventSource reconnects with the last id it saw: the unanswered message gets a new reply.
    again = read_events(infer(base, looping, "max_tokens=24&temperature=0"), last_event_id=events[-1]["id"])
    assert again[0]["event"] == "start" and again[-1]["event"] == "done"
    assert again[0]["data"]["message_id"] != events[0]["data"]["message_id"]
    assert history(base, looping) == saved[looping]["conversations"] + [again[-1]["data"]["message"]]
    # Delivered in full, so the same reconnect has nothing more to get.
    response = requests.get(infer(base, looping), headers={"Last-Event-ID": again[-1]["id"]}, timeout=10)
    assert response.status_code == 204

    if path:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()

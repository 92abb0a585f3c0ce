"""A small Server-Sent Events client over requests, for tests against the real server."""

import json

import requests

QUESTION = "What is the capital of France?"
LONG_QUESTION = "Tell me everything you know about the history of Rome, in detail."
# A history the default model, at temperature 0, answers with an endless loop of "I don't know.":
# replies that run to max_tokens, long enough to join, stop or walk away from.
ENDLESS = (LONG_QUESTION, "I don't know. " * 40, LONG_QUESTION)
GREEDY = "temperature=0"


def infer(base: str, chat_id: str, query: str = f"max_tokens=24&{GREEDY}", route: str = "inference") -> str:
    return f"{base}/conversations/{route}/{chat_id}?{query}"


def pieces(events: list[dict]) -> str:
    """The reply's text as streamed: its token events joined."""
    return "".join(e["data"]["content"] for e in events if e["event"] == "message")


class EventStream:
    """GET an SSE route and iterate over its events as dicts: id, event ("message" if none), data."""

    def __init__(self, url: str, last_event_id: str | None = None, timeout: float = 120):
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=headers, stream=True, timeout=timeout)
        self.pings = 0

    def __iter__(self):
        fields: dict = {}
        pending = ""
        for chunk in self.response.iter_content(chunk_size=None):
            pending += chunk.decode("utf-8")
            *lines, pending = pending.split("\n")
            for line in lines:
                if line == "":
                    if fields:
                        yield {
                            "id": fields.get("id"),
                            "event": fields.get("event", "message"),
                            "data": json.loads(fields["data"]),
                        }
                    fields = {}
                elif line.startswith(":"):
                    self.pings += 1
                else:
                    name, _, value = line.partition(": ")
                    assert name not in fields, f"repeated field {name}"
                    fields[name] = value

    def close(self) -> None:
        self.response.close()


def read_events(url: str, last_event_id: str | None = None) -> list[dict]:
    stream = EventStream(url, last_event_id)
    assert stream.response.status_code == 200, stream.response.text
    try:
        return list(stream)
    finally:
        stream.close()


def read_events_acting(url: str, after: int, action) -> list[dict]:
    """Read a stream to its end, calling action() once, as soon as `after` events have arrived."""
    stream = EventStream(url)
    assert stream.response.status_code == 200, stream.response.text
    events = []
    try:
        for event in stream:
            events.append(event)
            if len(events) == after:
                action()
    finally:
        stream.close()
    return events


def new_chat(base: str, *messages: str, roles=("Human", "Assistant")) -> str:
    """A chat holding the messages, alternating Human and Assistant; returns its id."""
    chat_id = requests.post(f"{base}/chats/create", json={"name": "test"}, timeout=10).json()["id"]
    for i, message in enumerate(messages):
        add_message(base, chat_id, message, roles[i % 2])
    return chat_id


def add_message(base: str, chat_id: str, message: str, role: str = "Human") -> dict:
    response = requests.post(
        f"{base}/conversations/create", json={"chat_id": chat_id, "role": role, "message": message}, timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()


def history(base: str, chat_id: str) -> list[dict]:
    return requests.get(f"{base}/chats/{chat_id}/conversations", timeout=10).json()

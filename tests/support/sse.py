"""A small Server-Sent Events client over requests, for the tests and benchmarks against the real server."""

import json
import threading

import requests


class EventStream:
    """GET an SSE route and iterate over its events as dicts: id, event ("message" if none), data."""

    def __init__(self, url: str, last_event_id: str | None = None, timeout: float = 120, headers: dict | None = None):
        headers = {"Accept": "text/event-stream", **(headers or {})}
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


def read_events_dropped_and_resumed(url: str, before_drop: int = 5) -> list[dict]:
    """Read `before_drop` events, drop the connection mid-reply, then resume with Last-Event-ID to the end: every
    event the client got, in order."""
    stream = EventStream(url)
    iterator = iter(stream)
    head = [next(iterator) for _ in range(before_drop)]
    stream.close()
    return head + read_events(url, last_event_id=head[-1]["id"])


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


class Arrivals:
    """Reads several streams at once, each in its own thread, and records every event in arrival order."""

    def __init__(self):
        self.log: list[tuple[str, dict]] = []
        self.threads: list[threading.Thread] = []

    def read(self, name: str, stream: EventStream) -> None:
        thread = threading.Thread(target=lambda: self.log.extend((name, event) for event in stream))
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def events(self, name: str) -> list[dict]:
        return [event for who, event in self.log if who == name]

    def first(self, name: str, kind: str) -> int:
        """The position of the stream's first event of this kind among all arrivals."""
        return next(i for i, (who, event) in enumerate(self.log) if who == name and event["event"] == kind)

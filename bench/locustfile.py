"""The load test's clients, for locust (headless; bench/load.py starts it against a live server).

ApiClient: creates chats, adds messages, lists, searches and reads them, without a pause.
ReplyClient (CHATAPI_LOAD_STREAMS of them): asks the model for a short reply after each new message and
reads the stream to its end, so that replies are generated all through the run.

Every request's status and time, and the id of every write the server acknowledged (each 201, and each reply
its `done` event says was saved), go to the JSON file CHATAPI_LOAD_RECORD names when locust quits, for the
runner to count and to look for in the database.
"""

import json
import os
import random
import time
from collections import Counter

from locust import FastHttpUser, HttpUser, constant, events, task

REPLY_QUERY = "max_tokens=16"
REPLY = "stream: request to done"  # a whole reply's time; the streams' names start with "stream:"

record = {"times": [], "statuses": Counter(), "server_errors": [], "written": {"chats": [], "conversations": []}}


@events.test_start.add_listener
def started(**_) -> None:
    record["started"] = time.time()


@events.request.add_listener
def count(request_type, name, response_time, response, exception, **_) -> None:
    """Every request's status (0: no answer) and time; the body of each 5xx, up to 20."""
    status = getattr(response, "status_code", None) or 0
    if name != REPLY:
        record["statuses"][status] += 1
    record["times"].append((name, response_time))
    if status >= 500 or (exception and not status):
        text = getattr(response, "text", None) or repr(exception)
        if len(record["server_errors"]) < 20:
            record["server_errors"].append(f"{request_type} {name}: {status} {text[:300]}")


@events.quitting.add_listener
def save(**_) -> None:
    record["ended"] = time.time()
    with open(os.environ["CHATAPI_LOAD_RECORD"], "w") as file:
        json.dump(record, file)


def created(response, kind: str) -> str | None:
    """The new row's id when the server acknowledged the write, recorded."""
    if response.status_code != 201:
        return None
    ident = response.json()["id"]
    record["written"][kind].append(ident)
    return ident


class ApiClient(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.chats: list[str] = []
        self.create_chat()

    @task(1)
    def create_chat(self) -> None:
        response = self.client.post("/chats/create", json={"name": f"load {random.randrange(1000)}"})
        if ident := created(response, "chats"):
            self.chats.append(ident)

    @task(4)
    def add_message(self) -> None:
        if self.chats:
            role = random.choice(["Human", "Assistant"])
            body = {"chat_id": random.choice(self.chats), "role": role, "message": "hi"}
            created(self.client.post("/conversations/create", json=body), "conversations")

    @task(3)
    def list_chats(self) -> None:
        self.client.get("/chats/?limit=20", name="/chats/?limit=20")

    @task(1)
    def search_chats(self) -> None:
        self.client.get(f"/chats/?q=load%20{random.randrange(100)}&limit=20", name="/chats/?q=...&limit=20")

    @task(2)
    def read_chat(self) -> None:
        if self.chats:
            self.client.get(f"/chats/{random.choice(self.chats)}", name="/chats/[id]")

    @task(2)
    def read_messages(self) -> None:
        if self.chats:
            self.client.get(f"/chats/{random.choice(self.chats)}/conversations", name="/chats/[id]/conversations")


class ReplyClient(HttpUser):
    fixed_count = int(os.environ.get("CHATAPI_LOAD_STREAMS", "3"))
    wait_time = constant(0)

    def on_start(self) -> None:
        self.chat = created(self.client.post("/chats/create", json={"name": "load replies"}), "chats")

    @task
    def reply(self) -> None:
        if not self.chat:
            return
        body = {"chat_id": self.chat, "role": "Human", "message": "Say something about the sea."}
        if not created(self.client.post("/conversations/create", json=body), "conversations"):
            return
        start = time.perf_counter()
        url = f"/conversations/inference/{self.chat}?{REPLY_QUERY}"
        last, data = None, {}
        response = self.client.get(url, stream=True, name="stream: /conversations/inference/[id] headers")
        try:
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    last = line.removeprefix("event: ")
                elif line.startswith("data: ") and last in ("done", "error"):
                    data = json.loads(line.removeprefix("data: "))
                    break
        finally:
            response.close()
        ended = None if last == "done" else RuntimeError(f"the stream ended with {last}: {data}")
        elapsed = (time.perf_counter() - start) * 1000
        events.request.fire(
            request_type="SSE", name=REPLY, response_time=elapsed, response_length=0, response=None, exception=ended
        )
        if last == "done" and data["message"]:
            record["written"]["conversations"].append(data["message"]["id"])

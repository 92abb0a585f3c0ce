"""Several models side by side: chats that pick one, `?model=` for one reply, /v1 routing, models loaded on demand
with CHATAPI_MODELS_LOADED=1 (one gives way to another while replies run), a model removed while a chat names it.

The two registered models are the bundled GGUF under two ids (symlinks in this run's CHATAPI_MODELS_DIR): what is
tested is how the server picks, loads and unloads models, which the weights do not change.
"""

import os
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from chatapi import create_app, pulls
from chatapi.llm.catalog import BUNDLED_ID, Catalog, ModelEntry, UnknownModel
from chatapi.llm.loaded import Turns
from chatapi.llm.local import LocalBackend
from chatapi.llm.model import default_model_path
from tests.support import wait_for
from tests.support.chats import ENDLESS, GREEDY, QUESTION, add_message, history, infer
from tests.support.server import FAST_STREAM_SETTINGS, ROOT, Server
from tests.support.sse import Arrivals, EventStream, read_events

SMALL = "acme/tiny-GGUF:Q4_K_M"
LARGE = "acme/tiny-GGUF:Q8_0"


def register(model_id: str) -> ModelEntry:
    """The bundled GGUF registered under another id, as a pulled model (its file: a symlink of its own)."""
    catalog = Catalog(os.environ["CHATAPI_MODELS_DIR"])
    bundled = default_model_path(ROOT / "instance" / "models")
    repo, _, quantization = model_id.partition(":")
    name = f"tiny-{quantization.lower()}.gguf"
    folder = catalog.hub_dir(repo)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(bundled)
    entry = ModelEntry(
        model_id,
        str(folder / name),
        bundled.stat().st_size,
        quantization,
        "gemma3",
        32768,
        False,
        "hub",
        repo=repo,
        files=(name,),
        created=time.time(),
    )
    catalog.add(entry)
    return entry


@pytest.fixture(scope="module")
def models_server(app, database_url, tmp_path_factory):
    """A server with two more models than the bundled one, one model in memory at a time, one reply per model."""
    for model_id in (SMALL, LARGE):
        register(model_id)
    log = tmp_path_factory.mktemp("server") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_PARALLEL="1", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()
    catalog = Catalog(os.environ["CHATAPI_MODELS_DIR"])
    for model_id in (SMALL, LARGE):
        catalog.remove(model_id)


def chat_on(base: str, model: str | None, *messages: str) -> str:
    response = requests.post(f"{base}/chats/create", json={"name": "models", "model": model}, timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["model"] == model
    chat_id = response.json()["id"]
    for i, message in enumerate(messages):
        add_message(base, chat_id, message, ("Human", "Assistant")[i % 2])
    return chat_id


def loaded(base: str) -> list[str]:
    return [m["id"] for m in requests.get(f"{base}/health", timeout=10).json()["model"]["loaded"]]


def test_each_chat_replies_with_its_model_and_each_reply_names_it(models_server):
    base = models_server
    listed = requests.get(f"{base}/v1/models", timeout=10).json()["data"]
    assert {BUNDLED_ID, SMALL, LARGE} <= {m["id"] for m in listed}
    for model in (SMALL, LARGE, None):
        chat_id = chat_on(base, model, QUESTION)
        events = read_events(infer(base, chat_id, f"max_tokens=2&{GREEDY}"))
        start, done = events[0], events[-1]
        assert start["event"] == "start" and start["data"]["model"] == (model or BUNDLED_ID)
        assert done["event"] == "done", events
        assert done["data"]["message"]["model"] == (model or BUNDLED_ID)
        assert history(base, chat_id)[-1]["model"] == (model or BUNDLED_ID)  # as saved
        assert history(base, chat_id)[0]["model"] is None  # a Human message
        assert loaded(base) == [model or BUNDLED_ID]  # one model in memory: the last one used


def test_a_reply_can_name_its_model_for_itself(models_server):
    base = models_server
    chat_id = chat_on(base, SMALL, QUESTION)
    events = read_events(infer(base, chat_id, f"max_tokens=2&{GREEDY}&model={LARGE}"))
    assert events[0]["data"]["model"] == LARGE and events[-1]["data"]["message"]["model"] == LARGE
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).json()["model"] == SMALL  # the chat's is unchanged


def test_a_chat_can_change_its_model_and_unknown_ones_are_refused(models_server):
    base = models_server
    chat_id = chat_on(base, None, QUESTION)
    changed = requests.put(f"{base}/chats/update/{chat_id}", json={"model": LARGE}, timeout=10)
    assert changed.status_code == 200 and changed.json()["model"] == LARGE
    back = requests.put(f"{base}/chats/update/{chat_id}", json={"model": None}, timeout=10)
    assert back.status_code == 200 and back.json()["model"] is None
    for bad in ("nobody/nothing:Q4_K_M", "", "x" * 1001):
        for response in (
            requests.post(f"{base}/chats/create", json={"name": "x", "model": bad}, timeout=10),
            requests.put(f"{base}/chats/update/{chat_id}", json={"model": bad}, timeout=10),
            requests.get(infer(base, chat_id, f"max_tokens=2&model={bad}"), timeout=10),
        ):
            assert response.status_code == 422, response.text
            assert list(response.json()["errors"]) == ["model"], response.text
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).json()["model"] is None  # nothing changed
    assert len(history(base, chat_id)) == 1  # and no reply was made


def test_a_model_gives_way_while_replies_run_and_nobody_starves(models_server):
    """With one model in memory at a time: a reply on SMALL runs; one on LARGE comes, then another on SMALL. SMALL
    takes no more replies, gives way once its reply ends, LARGE's reply runs, then SMALL is loaded again for the
    third: in the order they came, none cut."""
    base = models_server
    first, second, third = (
        chat_on(base, SMALL, *ENDLESS),
        chat_on(base, LARGE, *ENDLESS),
        chat_on(base, SMALL, *ENDLESS),
    )
    arrivals = Arrivals()
    first_stream = EventStream(infer(base, first, f"max_tokens=24&{GREEDY}"))
    first_events = iter(first_stream)
    assert next(first_events)["event"] == "start"
    next(first_events)  # its first token: SMALL is loaded and generating
    arrivals.read("first", first_events)
    arrivals.read("second", EventStream(infer(base, second, f"max_tokens=8&{GREEDY}")))
    wait_for(lambda: any(e["event"] == "queued" for e in arrivals.events("second")), 60, "the second reply queued")
    arrivals.read("third", EventStream(infer(base, third, f"max_tokens=8&{GREEDY}")))
    arrivals.join()

    for name in ("first", "second", "third"):
        assert arrivals.events(name)[-1]["event"] == "done", arrivals.events(name)
    assert arrivals.events("first")[-1]["data"]["finish_reason"] == "length"  # not cut by the swap
    assert arrivals.first("first", "done") < arrivals.first("second", "message") < arrivals.first("third", "message")
    assert arrivals.first("second", "done") < arrivals.first("third", "message")
    assert [e["data"]["model"] for e in (arrivals.events(n)[0] for n in ("second", "third"))] == [LARGE, SMALL]
    assert loaded(base) == [SMALL]
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert f'chatapi_model_loaded{{model="{SMALL}"}} 1.0' in metrics
    assert f'chatapi_model_unloads_total{{model="{LARGE}"}}' in metrics
    assert f'chatapi_model_load_seconds_count{{model="{LARGE}"}}' in metrics


def test_v1_routes_by_model(models_server):
    base = models_server
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2, "temperature": 0}
    answered = requests.post(f"{base}/v1/chat/completions", json={**body, "model": LARGE}, timeout=60)
    assert answered.status_code == 200 and answered.json()["model"] == LARGE
    assert loaded(base) == [LARGE]
    missing = requests.post(f"{base}/v1/chat/completions", json={**body, "model": "gpt-4o"}, timeout=60)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found" and missing.json()["error"]["param"] == "model"
    assert requests.get(f"{base}/v1/models/{SMALL}", timeout=10).json()["id"] == SMALL


def test_a_removed_model_leaves_its_chats_with_a_clear_409(models_server):
    base = models_server
    gone = "acme/tiny-GGUF:Q2_K"
    register(gone)
    chat_id = chat_on(base, gone, QUESTION)
    assert read_events(infer(base, chat_id, f"max_tokens=2&{GREEDY}"))[-1]["event"] == "done"
    Catalog(os.environ["CHATAPI_MODELS_DIR"]).remove(gone)
    refused = requests.get(infer(base, chat_id, f"max_tokens=2&{GREEDY}"), timeout=10)
    assert refused.status_code == 409 and gone in refused.json()["message"], refused.text
    assert requests.get(f"{base}/chats/{chat_id}", timeout=10).json()["model"] == gone  # the chat stays as it was
    assert len(history(base, chat_id)) == 2
    # Another model for the chat, and it answers again; the removed one was unloaded.
    requests.put(f"{base}/chats/update/{chat_id}", json={"model": None}, timeout=10).raise_for_status()
    assert read_events(infer(base, chat_id, f"max_tokens=2&{GREEDY}"))[-1]["event"] == "done"
    assert gone not in loaded(base)


# The catalog and the order of the queue, without a server.


def test_the_catalog_lists_the_bundled_model_a_path_and_pulled_ones(tmp_path):
    bundled = default_model_path(ROOT / "instance" / "models")
    mine = tmp_path / "My Model Q4.gguf"
    mine.write_bytes(b"GGUF" + bytes(60))  # damaged: listed all the same, and loading it will say why
    catalog = Catalog(tmp_path / "models", default=str(mine), bundled_dir=bundled.parent)
    assert [e.id for e in catalog.entries()] == [BUNDLED_ID, "My-Model-Q4"]
    assert catalog.default_id() == "My-Model-Q4" and catalog.resolve(None).path == str(mine)
    first = catalog.get(BUNDLED_ID)
    assert (first.architecture, first.quantization, first.context_length) == ("gemma3", "Q4_K_M", 32768)
    with pytest.raises(UnknownModel):
        catalog.resolve("acme/none:Q4_K_M")
    # The bundled model's own file named by path is the bundled model: one id, never loaded twice.
    same = Catalog(tmp_path / "models", default=str(bundled), bundled_dir=bundled.parent)
    assert [e.id for e in same.entries()] == [BUNDLED_ID] and same.default_id() == BUNDLED_ID
    # Two ids over one file: removing one leaves the file to the other.
    folder = catalog.hub_dir("acme/x")
    folder.mkdir(parents=True)
    (folder / "x.gguf").write_bytes(b"GGUF")
    for model_id in ("acme/x:A", "acme/x:B"):
        catalog.add(
            ModelEntry(model_id, str(folder / "x.gguf"), 4, None, None, None, False, "hub", "acme/x", ("x.gguf",))
        )
    assert catalog.remove("acme/x:A").id == "acme/x:A" and (folder / "x.gguf").exists()
    assert catalog.remove("acme/x:B") is not None and not (folder / "x.gguf").exists()
    assert catalog.remove("acme/x:B") is None and [e.id for e in catalog.entries()] == [BUNDLED_ID, "My-Model-Q4"]


def test_a_default_model_that_is_not_there_stops_the_server(database_url):
    with pytest.raises(ValueError, match="CHATAPI_MODEL='acme/none:Q4_K_M' names no model"):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "CHATAPI_MODEL": "acme/none:Q4_K_M"})


class Waiting:
    """A reply as the backend's admission sees it: its model."""

    def __init__(self, name: str, model: str):
        self.name, self.model = name, model

    def __repr__(self):
        return self.name


class Settled(LocalBackend):
    """The local backend with loads and unloads that happen at once, and no model behind them."""

    def __init__(self, loaded: list[str], models_loaded: int, parallel: int = 1):
        settings = SimpleNamespace(
            model=None, model_cache="", models_dir="", models_loaded=models_loaded, parallel=parallel, kv_dir="",
            kv_disk_bytes=0,
        )
        super().__init__(settings, on_end=None, on_failure=None)
        self.entries: dict[str, SimpleNamespace] = {}  # the catalog's, by id: each a pulled model
        entry = lambda model_id: self.entries.setdefault(model_id, SimpleNamespace(id=model_id, source="hub"))  # noqa: E731
        self.catalog = SimpleNamespace(get=entry, default_id=lambda: "x")
        self.log: list[str] = []
        for model_id in loaded:
            self._load(model_id)

    def _load(self, model_id: str) -> None:
        self.log.append(f"load {model_id}")
        self.models[model_id] = SimpleNamespace(
            id=model_id, entry=self.catalog.get(model_id), status="ok", last_used=len(self.log), unload=None
        )
        self.models[model_id].unload = lambda loaded=self.models[model_id]: self.unloaded_now(loaded)

    def unloaded_now(self, loaded) -> None:
        self.log.append(f"unload {loaded.id}")
        del self.models[loaded.id]
        if loaded is self.giving_way:
            wanted, self.giving_way, self.wanted = self.wanted, None, None
            self._load(wanted)


def test_replies_start_in_order_and_a_model_gives_way_only_to_the_oldest_waiting_reply():
    backend = Settled(["x"], models_loaded=1)
    running = [Waiting("a", "x")]
    waiting = deque([Waiting("b", "y"), Waiting("c", "x"), Waiting("d", "y")])
    # x is busy with a; the oldest waiting reply wants y: x takes no more (not c), and gives way once a ends.
    assert backend.admissible(waiting, running) == [] and backend.giving_way.id == "x"
    running.clear()
    assert backend.admissible(waiting, running) == [waiting[0]]  # b, on y; d waits: one reply per model
    assert backend.log == ["load x", "unload x", "load y"]
    waiting.popleft()
    running.append(Waiting("b", "y"))
    assert backend.admissible(waiting, running) == [] and backend.giving_way.id == "y"  # c is the oldest now
    running.clear()
    assert [r.name for r in backend.admissible(waiting, running)] == ["c"]  # y gave way, x loaded again
    assert backend.log[-2:] == ["unload y", "load x"]


def test_with_two_models_loaded_both_take_replies_and_the_least_recently_used_gives_way():
    backend = Settled(["x", "y"], models_loaded=2, parallel=2)
    waiting = deque([Waiting("a", "x"), Waiting("b", "y"), Waiting("c", "x")])
    assert [r.name for r in backend.admissible(waiting, [])] == ["a", "b", "c"]
    waiting = deque([Waiting("d", "z")])
    backend.models["x"].last_used = 100  # y was used longest ago, and is idle: it gives way to z at once
    assert backend.admissible(waiting, [Waiting("a", "x"), Waiting("c", "x")]) == []
    assert backend.log[-2:] == ["unload y", "load z"]
    assert [r.name for r in backend.admissible(waiting, [])] == ["d"]


def test_a_model_pulled_again_under_its_id_is_loaded_again_once_idle():
    backend = Settled(["x"], models_loaded=1)
    backend.entries["x"] = SimpleNamespace(id="x", source="hub", sha256="another")  # another file under the id x
    waiting = deque([Waiting("b", "x")])
    assert backend.admissible(waiting, [Waiting("a", "x")]) == []  # the old x takes no more; a runs on
    assert backend.log == ["load x"]
    assert backend.admissible(waiting, []) == [] and backend.log == ["load x", "unload x", "load x"]
    assert backend.admissible(waiting, []) == [waiting[0]]  # on the new x


def test_model_threads_take_turns_in_the_order_they_asked():
    turns = Turns()
    order: list[str] = []
    turns.__enter__()  # the first holds the turn
    threads = []
    for name in ("second", "third"):
        thread = threading.Thread(target=lambda name=name: (turns.__enter__(), order.append(name), turns.__exit__()))
        thread.start()
        threads.append(thread)
        wait_for(lambda: len(turns._waiting) == len(threads), 10, f"{name} waiting")
    order.append("first")
    turns.__exit__()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "second", "third"] and not turns._busy


def test_a_model_that_cannot_load_fails_its_replies_not_the_server(models_server):
    base = models_server
    catalog = Catalog(os.environ["CHATAPI_MODELS_DIR"])
    folder = catalog.hub_dir("acme/broken-GGUF")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.gguf").write_bytes(b"GGUF" + bytes(60))
    broken = ModelEntry(
        "acme/broken-GGUF:Q4_K_M",
        str(folder / "broken.gguf"),
        64,
        None,
        None,
        None,
        False,
        "hub",
        "acme/broken-GGUF",
        ("broken.gguf",),
    )
    catalog.add(broken)
    try:
        chat_id = chat_on(base, broken.id, QUESTION)
        events = read_events(infer(base, chat_id, f"max_tokens=2&{GREEDY}"))
        assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == 503, events
        assert broken.id in events[-1]["data"]["message"]
        again = requests.get(infer(base, chat_id, f"max_tokens=2&{GREEDY}"), timeout=10)
        assert again.status_code == 503 and "failed to load" in again.json()["message"], again.text
        assert requests.get(f"{base}/health", timeout=10).json()["status"] == "ok"  # the default model serves on
        other = chat_on(base, None, QUESTION)
        assert read_events(infer(base, other, f"max_tokens=2&{GREEDY}"))[-1]["event"] == "done"
    finally:
        catalog.remove(broken.id)


def test_with_room_for_two_a_later_replys_model_loads_beside_a_busy_one():
    """The oldest waiting reply's model is loaded but busy: a later reply's model takes the free place at once."""
    backend = Settled(["x"], models_loaded=2, parallel=1)
    waiting = deque([Waiting("c", "x"), Waiting("d", "y")])
    running = [Waiting("a", "x")]
    assert backend.admissible(waiting, running) == [] and backend.log == ["load x", "load y"]  # c waits for x
    assert backend.admissible(waiting, running) == [waiting[1]] and backend.giving_way is None  # y loaded: d starts


def test_the_default_of_a_running_server_is_not_removed_by_another_process(tmp_path):
    folder = tmp_path / "models"
    entry = ModelEntry("acme/x-GGUF:Q4_K_M", str(folder / "x.gguf"), 4, None, None, None, False, "hub", "acme/x-GGUF")
    serving = Catalog(folder, default=entry.id)
    serving.add(entry)
    serving.pin_default()  # as a server does as it starts (LocalBackend.load)
    shell = Catalog(folder)  # `flask models remove` in a shell without the server's CHATAPI_MODEL
    with pytest.raises(pulls.Conflict, match="default"):
        pulls.remove(shell, entry.id)
    assert shell.get(entry.id) is not None


def test_a_pulls_state_takes_any_id(client):
    """Pull states are files named by a digest of the id: an id too long or too strange for a file name is unknown
    (404), never an error."""
    (Path(os.environ["CHATAPI_MODELS_DIR"]) / "pulls").mkdir(parents=True, exist_ok=True)
    for model_id in ("x" * 300, "a/" + "é" * 120, "../../etc/passwd"):
        assert client.get(f"/models/{model_id}/progress").status_code == 404
        assert client.delete(f"/models/{model_id}").status_code == 404
        assert client.get(f"/models/{model_id}").status_code == 404

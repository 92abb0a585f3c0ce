"""Several models side by side: chats that pick one, `?model=` for one reply, /v1 routing, models loaded on demand
with CHATAPI_MODELS_LOADED=1 (one gives way to another while replies run), a model removed while a chat names it.

The two registered models are the bundled GGUF under two ids (symlinks in this run's CHATAPI_MODELS_DIR): what is
tested is how the server picks, loads and unloads models, which the weights do not change.
"""

import os
import time

import pytest
import requests

from chatapi.llm.catalog import BUNDLED_ID, Catalog, ModelEntry
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
    for bad in ("nobody/nothing:Q4_K_M", "", "x" * 201):
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

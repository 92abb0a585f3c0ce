"""CHATAPI_LLM_BACKEND=openai: replies streamed from a remote OpenAI-compatible server instead of the model in the
process. The server is llama-cpp-python's own (`python -m llama_cpp.server`) serving the bundled GGUF as three models
of their own windows, and, where token counts are needed (llama_cpp.server reports none in a stream), chatapi's own
/v1 on the local backend; llama-server's and vLLM's ways of saying a window and counting tokens are a small server's
on 127.0.0.1 (FakeModelServer), neither being installed here.

The replies are saved by the same code as the local backend's (chatapi/replies.py save_reply), tested on both
databases there: these run on SQLite only (conftest.SQLITE_ONLY)."""

import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from chatapi import create_app
from chatapi.llm.catalog import UnknownModel
from chatapi.llm.model import default_model_path
from chatapi.llm.prompt import LAYOUTS, ContextLengthExceeded, Message, chat_messages
from chatapi.llm.remote import NO_USAGE, STOPPED_USAGE, RemoteBackend
from chatapi.llm.remote_fit import Template, estimate, fit_history
from chatapi.llm.settings import ModelSettings
from config import Config
from tests.support import wait_for
from tests.support.chats import ENDLESS, QUESTION, add_message, history, infer, new_chat, pieces
from tests.support.server import FAST_STREAM_SETTINGS, ROOT, Server, free_port
from tests.support.sse import EventStream, read_events, read_events_acting
from tests.support.upstream import LlamaCppServer, SilentServer
from tests.support.web import web_settings

UPSTREAM_KEY = "upstream-key-" + uuid.uuid4().hex
SMALL_WINDOW = 512
# The upstream's models: the bundled GGUF under three names. Their windows are the server's own (it says none of
# them); in Gemma's turn format the base model answers too.
MODELS = {
    "tiny": {"n_ctx": 2048, "chat_format": "chatml"},  # the first: the default
    "tiny-gemma": {"n_ctx": SMALL_WINDOW, "chat_format": "gemma"},
    "tiny-256": {"n_ctx": 256, "chat_format": "gemma"},  # a window smaller than chatapi assumes (SMALL_WINDOW)
}
# A chat of some 1,300 tokens, longer than SMALL_WINDOW: ten questions and their answers, and a last question.
LONG_CHAT = tuple(
    text
    for i in range(10)
    for text in (
        f"Question {i}: tell me about volcano number {i}, its eruptions and the towns around it.",
        f"Answer {i}: volcano number {i} erupted {i + 2} times in the last century; ash covered the towns around "
        f"it, and the people of the valley moved to the coast after the eruption of {1900 + i * 7}.",
    )
) + ("Which of them erupted most often?",)
REFUSED = '"POST /v1/chat/completions HTTP/1.1" 400'  # the upstream refused a prompt (its log's line)
VOLCANO = "How often does the Zorblax volcano erupt?"


def remote(url: str, **more: str) -> dict:
    """A chatapi server's settings for the remote backend at `url` (a base URL ending in /v1)."""
    return {**FAST_STREAM_SETTINGS, "CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": url, **more}


def health(base: str) -> requests.Response:
    return requests.get(f"{base}/health", timeout=30)


class LlamaCppRouter(LlamaCppServer):
    """llama_cpp.server serving one GGUF under several names (`models`: name -> its settings), from a config file
    (whose port and API key its command line's give way to). It loads one model at a time, swapping on demand."""

    def __init__(self, log_path: Path, model: str, models: dict[str, dict], api_key: str):
        port, threads = free_port(), os.cpu_count() or 1
        config = {
            **{"host": "127.0.0.1", "port": port, "api_key": api_key, "interrupt_requests": False},
            "models": [
                {"model": model, "model_alias": name, "n_threads": threads, "n_threads_batch": threads, **settings}
                for name, settings in models.items()
            ],
        }
        config_path = log_path.with_suffix(".json")
        config_path.write_text(json.dumps(config))
        super().__init__(log_path, model, 0, threads, "--config_file", str(config_path), "--api_key", api_key)
        self.port, self.url = port, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """llama_cpp.server on the bundled GGUF with an API key, as MODELS; it serves one request at a time, and a new
    one waits rather than cutting the running one short (interrupt_requests False). The GGUF has no chat template,
    and in the server's fallback format (llama-2) the base model answers nothing: ChatML it continues."""
    model = os.environ.get("CHATAPI_MODEL_PATH") or default_model_path(ROOT / "instance" / "models")
    log = tmp_path_factory.mktemp("upstream") / "llama_cpp_server.log"
    with LlamaCppRouter(log, str(model), MODELS, UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def remote_server(app, database_url, upstream, web, tmp_path_factory):
    """chatapi on llama_cpp.server, with internet mode on the local web."""
    settings = remote(f"{upstream.url}/v1", CHATAPI_LLM_API_KEY=UPSTREAM_KEY, CHATAPI_N_CTX="2048")
    log = tmp_path_factory.mktemp("remote") / "gunicorn.log"
    server = Server(database_url, log, **settings, **web_settings(web))
    yield server.wait_until_up()
    server.stop()


@pytest.fixture(scope="module")
def small_server(app, database_url, upstream, tmp_path_factory):
    """chatapi on the upstream's tiny-gemma by default, assuming a window of SMALL_WINDOW tokens for the models
    whose window the upstream does not say (llama_cpp.server says none)."""
    settings = remote(
        f"{upstream.url}/v1",
        CHATAPI_LLM_API_KEY=UPSTREAM_KEY,
        CHATAPI_LLM_MODEL="tiny-gemma",
        CHATAPI_LLM_N_CTX=str(SMALL_WINDOW),
    )
    server = Server(database_url, tmp_path_factory.mktemp("small") / "gunicorn.log", **settings)
    yield server.wait_until_up()
    server.stop()


@pytest.fixture(scope="module")
def counting_pair(app, database_url, web, tmp_path_factory):
    """chatapi on chatapi's own /v1 (the local backend), which reports token counts in its streams."""
    directory = tmp_path_factory.mktemp("pair")
    local = Server(database_url, directory / "local.log", **FAST_STREAM_SETTINGS).wait_until_up()
    try:
        front = Server(database_url, directory / "front.log", **remote(f"{local.url}/v1"), **web_settings(web))
        yield front.wait_until_up(), local
        front.stop()
    finally:
        local.stop()


def test_a_reply_streams_from_the_model_server_and_is_saved(remote_server, upstream, client):
    base = remote_server.url
    body = health(base).json()
    assert body["status"] == "ok" and body["model"]["status"] == "ok"
    assert body["model"]["backend"] == "openai" and body["model"]["url"] == f"{upstream.url}/v1"
    assert (
        body["model"]["name"]
        == requests.get(
            f"{upstream.url}/v1/models", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}, timeout=10
        ).json()["data"][0]["id"]
    )

    chat_id = new_chat(base, *ENDLESS)
    events = read_events(infer(base, chat_id, "max_tokens=16&temperature=0"))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"message"}, kinds
    message_id = events[0]["data"]["message_id"]
    assert [e["id"] for e in events] == [f"{message_id}.{i}" for i in range(len(events))]
    start = {"chat_id": chat_id, "message_id": message_id, "mode": "local", "model": "tiny", "truncated": 0}
    assert events[0]["data"] == start
    done = events[-1]["data"]
    assert done["finish_reason"] == "length"  # max_tokens reached the server
    assert done["message"]["id"] == message_id and done["message"]["message"] == pieces(events).strip()
    assert history(base, chat_id)[-1] == done["message"]
    # llama_cpp.server reports no usage in a stream: the counts are null and a note says why, never a guess.
    assert done["usage"] == {"prompt_tokens": None, "completion_tokens": None, "cached_tokens": None, "note": NO_USAGE}
    assert done["timings"]["tokens_per_second"] is None and done["timings"]["ttft_ms"] > 0


def test_the_usage_is_the_model_servers_and_the_options_reach_it(counting_pair, client):
    front, local = counting_pair
    base = front.url
    chat_id = new_chat(base, QUESTION)
    seeded = "max_tokens=5&temperature=1.5&top_p=0.9&seed=7"
    first = read_events(infer(base, chat_id, seeded))[-1]["data"]
    usage = first["usage"]
    assert first["finish_reason"] == "length" and usage["completion_tokens"] == 5  # max_tokens went through
    assert usage["prompt_tokens"] > 20 and "note" not in usage
    assert first["timings"]["tokens_per_second"] is not None

    # The same seed, temperature and top_p give the same text again: they reached the model too. Compared between
    # two replies that both found the prompt in the server's cache: a cached prompt's last token is read alone, which
    # may shift the logits a little from the whole prompt read at once, and at temperature 1.5 change a draw.
    texts = []
    for _ in range(2):
        requests.delete(f"{base}/conversations/delete/{first['message']['id']}", timeout=10)
        first = read_events(infer(base, chat_id, seeded))[-1]["data"]
        # The server found the prompt in its cache, and said so.
        assert first["usage"]["cached_tokens"] > 0
        texts.append(first["message"]["message"])
    assert texts[0] == texts[1]


def test_the_openai_api_works_on_the_remote_backend_with_stop_strings(counting_pair, client):
    front, local = counting_pair
    model = requests.get(f"{local.url}/v1/models", timeout=10).json()["data"][0]["id"]
    ask = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24}
    plain = requests.post(f"{front.url}/v1/chat/completions", json=ask, timeout=60).json()
    text = plain["choices"][0]["message"]["content"]
    assert text and plain["usage"]["completion_tokens"] > 0 and plain["model"] == model
    stop = text.split()[1]  # the second word: the answer stops before it
    stopped = requests.post(f"{front.url}/v1/chat/completions", json={**ask, "stop": [stop]}, timeout=60).json()
    assert stopped["choices"][0]["message"]["content"].strip() == text[: text.index(stop)].strip()


def test_stop_closes_the_request_to_the_model_server_and_saves_the_part(remote_server, upstream, client):
    base = remote_server.url
    chat_id = new_chat(base, *ENDLESS)
    stopped_at = []

    def stop() -> None:
        stopped_at.append(time.monotonic())
        assert requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10).json()["stopped"] is True

    disconnects = upstream.output().count("Disconnected from client")
    events = read_events_acting(infer(base, chat_id, "max_tokens=1000&temperature=0"), 8, stop)
    done = events[-1]
    assert done["event"] == "done" and done["data"]["finish_reason"] == "cancelled"
    assert time.monotonic() - stopped_at[0] < 5  # not the 1,000 tokens' end
    assert done["data"]["message"]["message"] == pieces(events).strip()
    assert history(base, chat_id)[-1]["message"] == pieces(events).strip()
    assert done["data"]["usage"]["completion_tokens"] is None and done["data"]["usage"]["note"] == STOPPED_USAGE
    # The model server saw its client go away: the request was closed, not left to run to its end.
    wait_for(lambda: upstream.output().count("Disconnected from client") > disconnects, 30, "the upstream's log")


def test_a_reconnect_with_last_event_id_gets_the_rest(remote_server, client):
    base = remote_server.url
    chat_id = new_chat(base, *ENDLESS)
    url = infer(base, chat_id, "max_tokens=40&temperature=0")
    stream = EventStream(url)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 5:
            break
    stream.close()
    rest = read_events(url, last_event_id=seen[-1]["id"])
    message_id = seen[0]["data"]["message_id"]
    assert [e["id"] for e in seen + rest] == [f"{message_id}.{i}" for i in range(len(seen) + len(rest))]
    assert rest[-1]["event"] == "done"
    assert rest[-1]["data"]["message"]["message"] == pieces(seen + rest).strip()
    # Delivered in full: a reconnect with the last id gets 204.
    assert requests.get(url, headers={"Last-Event-ID": rest[-1]["id"]}, timeout=10).status_code == 204


def test_internet_mode_puts_the_sources_in_the_model_servers_prompt(remote_server, counting_pair, web, client):
    base = remote_server.url
    events = read_events(
        f"{base}/conversations/inference_internet/{new_chat(base, VOLCANO)}?max_tokens=8&temperature=0"
    )
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["start", "search", "sources"] and kinds[-1] == "done", kinds
    sources = events[2]["data"]["sources"]
    assert sources[0]["url"] == f"{web.url}/articles/volcano"
    assert events[-1]["data"]["message"]["sources"] == sources

    # Through a server that counts: the sources made the prompt longer by far.
    front = counting_pair[0].url
    plain = read_events(infer(front, new_chat(front, VOLCANO), "max_tokens=1"))[-1]["data"]
    sourced = read_events(f"{front}/conversations/inference_internet/{new_chat(front, VOLCANO)}?max_tokens=1")
    assert "sources" in [e["event"] for e in sourced]
    assert sourced[-1]["data"]["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"] > 100


def test_a_model_server_that_is_down_ends_the_reply_with_an_error_and_fails_health(start_server, client):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    server = start_server(ready_status=503, **remote(url))
    base = server.url
    body = health(base).json()
    assert body["status"] == "unavailable" and body["model"]["status"] == "unavailable"
    assert body["reason"] == f"model unavailable: the model server at {url} cannot be reached: Connection refused"

    chat_id = new_chat(base, QUESTION)
    events = read_events(infer(base, chat_id))
    assert [e["event"] for e in events] == ["start", "error"]
    # The server's address and the system's words go to the log only.
    assert events[-1]["data"] == {"code": 502, "message": "the model server cannot be reached"}
    assert f"the model server at {url} cannot be reached: Connection refused" in server.output()
    assert [m["role"] for m in history(base, chat_id)] == ["Human"]  # nothing saved


def test_a_model_server_that_never_answers_ends_the_reply_within_the_timeout(start_server, client):
    silent = SilentServer()
    try:
        url = f"{silent.url}/v1"
        base = start_server(ready_status=503, **remote(url, CHATAPI_LLM_TIMEOUT="1", CHATAPI_LLM_MODEL="any")).url
        reason = health(base).json()["reason"]
        assert reason == f"model unavailable: the model server at {url} did not answer within 1 s"
        chat_id = new_chat(base, QUESTION)
        started = time.monotonic()
        events = read_events(infer(base, chat_id))
        assert time.monotonic() - started < 10
        assert [e["event"] for e in events] == ["start", "error"]
        assert events[-1]["data"] == {"code": 504, "message": "the model server sent nothing for 1 s"}
    finally:
        silent.close()


def test_a_wrong_api_key_is_the_model_servers_error(start_server, upstream, client):
    url = f"{upstream.url}/v1"
    base = start_server(ready_status=503, **remote(url, CHATAPI_LLM_API_KEY="wrong")).url
    assert "answered 401: Invalid API key to GET /models" in health(base).json()["reason"]
    events = read_events(infer(base, new_chat(base, QUESTION)))
    assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == 502
    assert events[-1]["data"]["message"] == "the model server answered 401 to GET /models"  # its words: the log's


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"CHATAPI_LLM_BACKEND": "vllm"}, "CHATAPI_LLM_BACKEND='vllm': must be one of local, openai"),
        ({"CHATAPI_LLM_BACKEND": "openai"}, "CHATAPI_LLM_BACKEND=openai needs CHATAPI_LLM_URL"),
        ({"CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": "127.0.0.1:8001"}, "needs CHATAPI_LLM_URL"),
        ({"CHATAPI_LLM_URL": "http://127.0.0.1:8001/v1"}, "CHATAPI_LLM_URL set with CHATAPI_LLM_BACKEND=local"),
        ({"CHATAPI_LLM_MODEL": "m", "CHATAPI_LLM_API_KEY": "k"}, "CHATAPI_LLM_API_KEY, CHATAPI_LLM_MODEL set with"),
        (
            {"CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": "http://127.0.0.1:1/v1", "CHATAPI_LLM_TIMEOUT": 0},
            "CHATAPI_LLM_TIMEOUT=0: must be more than 0 seconds",
        ),
    ],
)
def test_a_backend_setting_that_cannot_work_stops_the_app(database_url, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, **settings})


def test_the_server_refuses_to_start_without_the_model_servers_url(database_url, tmp_path):
    server = Server(database_url, tmp_path / "gunicorn.log", CHATAPI_LLM_BACKEND="openai")
    assert "CHATAPI_LLM_BACKEND=openai needs CHATAPI_LLM_URL" in server.refusal()


def test_the_prompt_goes_as_chat_messages_with_the_sources_where_the_layout_puts_them():
    history = [Message("Human", " Hi "), Message("Assistant", "Hello."), Message("Human", "Volcano?")]
    first, second = user("Hi"), {"role": "assistant", "content": "Hello."}
    system = {"role": "system", "content": "Be brief."}
    assert chat_messages(" Be brief. ", history).messages == [system, first, second, user("Volcano?")]
    assert chat_messages("", history).messages == [first, second, user("Volcano?")]  # no empty system message
    placed = {layout: chat_messages("Be brief.", history, "[1] Zorblax", layout).messages for layout in LAYOUTS}
    assert placed["sources-first"] == [system, first, second, user("[1] Zorblax\n\nVolcano?")]
    assert placed["question-first"] == [system, first, second, user("Volcano?\n\n[1] Zorblax")]
    sourced_system = {"role": "system", "content": "Be brief.\n\n[1] Zorblax"}
    assert placed["system"] == [sourced_system, first, second, user("Volcano?")]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_a_model_servers_user_and_password_are_never_shown():
    url = f"http://someone:secret-password@127.0.0.1:{free_port()}/v1"
    config = {name: getattr(Config, name) for name in dir(Config) if name.isupper()}
    settings = ModelSettings.from_config({**config, "CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": url}, "unused")
    backend = RemoteBackend(settings, on_end=None, on_failure=None)
    described = backend.describe()
    assert described["status"] == "unavailable" and described["url"] == url.replace("someone:secret-password@", "")
    assert "secret-password" not in described["reason"] and "someone" not in described["reason"]


def upstream_post(upstream, path: str, body: dict) -> dict:
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    response = requests.post(f"{upstream.url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def openai_messages(texts) -> list[dict]:
    """Texts as OpenAI's messages, a user's first, alternating."""
    return [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(texts)]


def test_a_chat_longer_than_the_model_servers_window_is_trimmed_to_fit(small_server, upstream, client):
    base = small_server.url
    refused = upstream.output().count(REFUSED)
    chat_id = new_chat(base, *LONG_CHAT)
    events = read_events(infer(base, chat_id, "max_tokens=8&temperature=0"))
    assert [e["event"] for e in events][-1] == "done", events[-1]
    truncated = events[0]["data"]["truncated"]
    assert 0 < truncated < len(LONG_CHAT) - 1
    assert history(base, chat_id)[-1]["message"] == pieces(events).strip()
    assert upstream.output().count(REFUSED) == refused  # the upstream never saw a prompt too long for it

    # The oldest messages went (a whole number of them, the latest question kept): what was sent fits the window
    # beside max_tokens, by the upstream's own count, and not by a wide margin.
    kept = openai_messages(LONG_CHAT)[truncated:]
    sent = upstream_post(upstream, "/v1/chat/completions", {"model": "tiny-gemma", "messages": kept, "max_tokens": 1})
    assert SMALL_WINDOW * 3 // 4 < sent["usage"]["prompt_tokens"] <= SMALL_WINDOW - 8


def test_the_openai_api_refuses_a_message_longer_than_the_window_before_the_model_server_sees_it(
    small_server, upstream, client
):
    refused = upstream.output().count(REFUSED)
    messages = openai_messages([*LONG_CHAT[:-1], "Which volcano? " * 200])  # the last message alone is too long
    ask = {"model": "tiny-gemma", "messages": messages, "max_tokens": 8}
    response = requests.post(f"{small_server.url}/v1/chat/completions", json=ask, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert f"maximum context length is {SMALL_WINDOW} tokens" in error["message"]
    assert upstream.output().count(REFUSED) == refused


def test_the_openai_api_routes_by_model_and_learns_a_window_the_model_server_names(small_server, upstream, client):
    """The same messages (~430 tokens) to three models: tiny's window takes them; tiny-256's, smaller than chatapi
    assumes, does not: the upstream refuses them and names its window, to which the next request is fitted. A
    model the upstream does not list is OpenAI's 404."""
    base = small_server.url
    ask = {"messages": openai_messages(LONG_CHAT[-13:]), "max_tokens": 8, "temperature": 0}
    refused = upstream.output().count(REFUSED)
    tiny = requests.post(f"{base}/v1/chat/completions", json={**ask, "model": "tiny"}, timeout=60)
    assert tiny.status_code == 200 and tiny.json()["model"] == "tiny", tiny.text
    assert upstream.output().count(REFUSED) == refused
    first = requests.post(f"{base}/v1/chat/completions", json={**ask, "model": "tiny-256"}, timeout=60)
    assert first.status_code == 502 and upstream.output().count(REFUSED) == refused + 1, first.text
    again = requests.post(f"{base}/v1/chat/completions", json={**ask, "model": "tiny-256"}, timeout=60)
    assert again.status_code == 200 and again.json()["model"] == "tiny-256", again.text
    assert upstream.output().count(REFUSED) == refused + 1  # fitted to 256 tokens, older messages left out
    # The chat API's replies on it are trimmed to the learned window too.
    chat_id = new_chat(base, *LONG_CHAT)
    events = read_events(infer(base, chat_id, "max_tokens=8&temperature=0&model=tiny-256"))
    assert events[-1]["event"] == "done" and events[0]["data"]["model"] == "tiny-256", events[-1]
    assert events[0]["data"]["truncated"] > len(LONG_CHAT) // 2
    assert upstream.output().count(REFUSED) == refused + 1

    unknown = requests.post(f"{base}/v1/chat/completions", json={**ask, "model": "nope"}, timeout=60)
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "nope" in error["message"]


def test_the_model_servers_models_are_listed(small_server, upstream, client):
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    models = requests.get(f"{upstream.url}/v1/models", headers=headers, timeout=10).json()["data"]
    assert [m["id"] for m in models] == list(MODELS)
    listed = requests.get(f"{small_server.url}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in listed] == list(MODELS)
    assert requests.get(f"{small_server.url}/v1/models/tiny-256", timeout=10).json()["id"] == "tiny-256"
    assert requests.get(f"{small_server.url}/v1/models/nope", timeout=10).status_code == 404

    # The service's listing (GET /models): CHATAPI_LLM_MODEL the default, what llama_cpp.server does not say null.
    config = {name: getattr(Config, name) for name in dir(Config) if name.isupper()}
    config.update(
        CHATAPI_LLM_BACKEND="openai",
        CHATAPI_LLM_URL=f"{upstream.url}/v1",
        CHATAPI_LLM_API_KEY=UPSTREAM_KEY,
        CHATAPI_LLM_MODEL="tiny-gemma",
    )
    backend = RemoteBackend(ModelSettings.from_config(config, "unused"), on_end=None, on_failure=None)
    listing = backend.listing()
    assert [m["id"] for m in listing] == list(MODELS)
    assert [m["default"] for m in listing] == [False, True, False]
    unknown = ("size", "quantization", "architecture", "context_length", "chat_template", "loaded", "repo")
    assert {m["source"] for m in listing} == {"remote"}
    assert {m[field] for m in listing for field in unknown} == {None}
    assert backend.resolve(None) == "tiny-gemma" and backend.resolve("tiny") == "tiny"
    with pytest.raises(UnknownModel):
        backend.resolve("nope")


def test_the_chat_api_routes_a_reply_by_model(small_server, upstream, client):
    base = small_server.url
    chat_id = new_chat(base, QUESTION)
    events = read_events(infer(base, chat_id, "max_tokens=4&temperature=0&model=tiny"))
    assert events[0]["data"]["model"] == "tiny" and events[-1]["event"] == "done"
    assert history(base, chat_id)[-1]["model"] == "tiny"
    add_message(base, chat_id, QUESTION)
    events = read_events(infer(base, chat_id, "max_tokens=4&temperature=0"))
    assert events[0]["data"]["model"] == "tiny-gemma"  # the server's default (CHATAPI_LLM_MODEL)
    assert history(base, chat_id)[-1]["model"] == "tiny-gemma"
    assert requests.get(infer(base, chat_id, "model=nope"), timeout=10).status_code == 422


def test_fit_history_keeps_what_the_local_prompt_builder_keeps():
    template = Template(fixed=3, per_message=2, system=1)
    messages = [Message(role, f"{role} {i} " + "word " * 8) for i, role in enumerate(["Human", "Assistant"] * 3)]
    history = [*messages, Message("Human", "last question")]  # ten words each, then two

    def words(text: str) -> int:
        return len(text.split())

    def size(system: str, kept: list[Message]) -> int:
        return template.cost(words, system, [m.text for m in kept])

    whole = size("Be brief.", history)
    assert fit_history("Be brief.", history, whole, True, words, template) == ("Be brief.", history, 0)
    # One token short: the oldest message goes; then the next oldest, a message at a time.
    assert fit_history("Be brief.", history, whole - 1, True, words, template) == ("Be brief.", history[1:], 1)
    assert fit_history("Be brief.", history, size("Be brief.", history[3:]), False, words, template)[2] == 3
    # The latest Human message and the last one stay, on either side of which the oldest go.
    answered = [*history, Message("Assistant", "an answer " * 5)]
    kept = fit_history("", answered, size("", [answered[-3], *answered[-2:]]), True, words, template)
    assert kept == ("", answered[-3:], len(answered) - 3)
    # What must stay does not fit: an error without `cut`, else cut texts (their ends kept) and a cut system
    # prompt (its beginning kept).
    budget = size("", history[-1:]) + 1
    with pytest.raises(ContextLengthExceeded) as refused:
        fit_history("You are a guide. " * 10, history, budget + 5, False, words, template)
    assert refused.value.needed == size("You are a guide. " * 10, history[-1:]) and refused.value.budget == budget + 5
    long = [Message("Human", " ".join(f"w{i}" for i in range(200)))]
    system, kept, truncated = fit_history("Be brief and kind. " * 20, long, 80, True, words, template)
    assert system.startswith("Be brief and kind.") and system.endswith(" …") and words(system) < 40
    assert kept[0].text.startswith("… ") and kept[0].text.endswith("w199") and truncated == 2
    assert size(system, kept) <= 80


def test_the_estimate_counts_more_tokens_than_the_model_servers_tokenizer(upstream):
    texts = [
        QUESTION,
        "def fit(history: list[Message], budget: int) -> list[Message]:\n    return history[-budget:]",
        "東京は日本の首都です。富士山は高い山です。",
        "Москва — столица России, крупнейший город страны.",
        "🌋🌋 Zorblax! ¿Qué pasa? 1900-2024: 124 years.",
        "a, b; c. d! e? f: g (h) [i] {j} <k> 'l' \"m\" n-o p/q",
        "Ünïcödé façade naïve résumé Ærøskøbing Łódź",
        "0.5 + 1.25 = 1.75; 2^10 = 1024; 3.14159265358979",
        "    if x:\n        return {'a': [1, 2, 3]}\n    else:\n        pass\n",
        "Als Gregor Samsa eines Morgens aus unruhigen Träumen erwachte, fand er sich in seinem Bett.",
        "北京是中国的首都，也是一座历史悠久的城市。",
        "서울은 대한민국의 수도입니다.",
        "مرحبا بك في القاهرة، عاصمة مصر.",
    ]
    for text in texts:
        tokens = upstream_post(upstream, "/extras/tokenize", {"input": text})["tokens"]
        assert estimate(text) >= len(tokens) - 1, text  # less its BOS


class FakeModelServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers as llama-server or vLLM say a model's window and count
    tokens (a word a token, whatever its chat template adds: FAKE_TEMPLATE): llama-server in /props and POST
    /tokenize {"content"}, vLLM in /v1/models' max_model_len and POST /tokenize {"prompt"}. Its one model is "m",
    of FAKE_WINDOW tokens; `prompts` holds the messages of each reply asked for."""

    def __init__(self, flavor: str):
        self.flavor = flavor
        self.prompts: list[list[dict]] = []
        handler = type("Handler", (FakeModelHandler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def prompt_tokens(messages: list[dict]) -> int:
        return FAKE_TEMPLATE.fixed + sum(len(m["content"].split()) + FAKE_TEMPLATE.per_message for m in messages)


FAKE_WINDOW = 300
FAKE_TEMPLATE = Template(fixed=5, per_message=4, system=4)  # a system prompt's turn as any other's


class FakeModelHandler(BaseHTTPRequestHandler):
    fake: FakeModelServer

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: dict | None = None, stream: list[dict] | None = None) -> None:
        data = json.dumps(body).encode() if stream is None else "".join(f"data: {json.dumps(c)}\n\n" for c in stream)
        data = data if isinstance(data, bytes) else (data + "data: [DONE]\n\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if stream is None else "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        vllm = self.fake.flavor == "vllm"
        if self.path == "/v1/models":
            model = {"id": "m", "max_model_len": FAKE_WINDOW} if vllm else {"id": "m", "meta": {"size": 1234}}
            return self.answer(200, {"object": "list", "data": [model]})
        if self.path.startswith("/props") and not vllm:
            return self.answer(200, {"default_generation_settings": {"n_ctx": FAKE_WINDOW}})
        self.answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body.get("prompt" if self.fake.flavor == "vllm" else "content")
        if self.path == "/tokenize" and text is not None:
            return self.answer(200, {"tokens": list(range(len(text.split()))), "max_model_len": FAKE_WINDOW})
        if self.path == "/v1/chat/completions" and body.get("stream"):
            self.fake.prompts.append(body["messages"])
            return self.answer(200, stream=[{"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}])
        if self.path == "/v1/chat/completions":
            usage = {"prompt_tokens": self.fake.prompt_tokens(body["messages"]), "completion_tokens": 1}
            return self.answer(200, {"choices": [{"message": {"content": "ok"}}], "usage": usage})
        self.answer(404 if self.path != "/tokenize" else 400, {"error": "no"})


@pytest.mark.parametrize("flavor", ["llama-server", "vllm"])
def test_the_window_and_token_counts_of_llama_server_and_vllm_are_theirs(flavor):
    fake = FakeModelServer(flavor)
    try:
        config = {name: getattr(Config, name) for name in dir(Config) if name.isupper()}
        config.update(CHATAPI_LLM_BACKEND="openai", CHATAPI_LLM_URL=f"{fake.url}/v1", CHATAPI_LLM_N_CTX=4096)
        backend = RemoteBackend(ModelSettings.from_config(config, "unused"), on_end=None, on_failure=None)
        assert backend.resolve(None) == "m" and backend.context_window("m") == FAKE_WINDOW
        assert backend.count_tokens("m", ["one two three", "four"]) == [3, 1]
        assert backend.models.template("m") == FAKE_TEMPLATE  # measured from the usage of three tiny chats
        listed = backend.listing()[0]
        assert (listed["context_length"], listed["size"]) == (FAKE_WINDOW, None if flavor == "vllm" else 1234)

        texts = [f"message {i}" + " word" * 38 for i in range(12)] + ["the last question?"]
        history = [Message(("Human", "Assistant")[i % 2], text) for i, text in enumerate(texts)]
        prompt = backend.build("m", "Be brief.", history, FAKE_WINDOW - 20)
        sent = fake.prompt_tokens(prompt.messages)
        # Whole messages left out, the oldest first: what is kept is within the budget by less than one more.
        assert prompt.messages[1:] == openai_messages(texts)[prompt.truncated :] and prompt.truncated > 0
        assert FAKE_WINDOW - 20 - 44 < sent <= FAKE_WINDOW - 20
    finally:
        fake.close()

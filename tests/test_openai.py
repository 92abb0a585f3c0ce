"""The OpenAI-compatible API (/v1) with the official `openai` package and plain HTTP, against the real server and
model. Nothing here touches the database (CHATAPI_OPENAI_STORE is off; tests/test_openai_store.py has it on),
so these run on SQLite only (conftest.SQLITE_ONLY)."""

import json
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import openai
import pytest
import requests

from chatapi.openai_api.schemas import MAX_STOP_CHARS
from tests.support import wait_for
from tests.support.chats import ENDLESS, GREEDY, QUESTION, add_message, infer, new_chat
from tests.support.client import snapshot
from tests.support.metrics import moved, scrape
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.sse import EventStream, read_events

KEY = "openai-key-" + uuid.uuid4().hex
IDLE = {"running": 0, "waiting": 0}
ASK = [{"role": "user", "content": QUESTION}]
# A conversation the model answers at temperature 0 with an endless loop (tests/support/chats.py).
ENDLESS_MESSAGES = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(ENDLESS)]
# A streamed reply of the looping conversation that runs until stopped.
ENDLESS_STREAM = {
    "model": "gemma-3-270m",
    "messages": ENDLESS_MESSAGES,
    "max_tokens": 2000,
    "temperature": 0,
    "stream": True,
}


@pytest.fixture(scope="module")
def openai_server(app, database_url, tmp_path_factory):
    """A server whose grace period (60 s) is far longer than any test waits: a reply that ends sooner after
    its client left was ended by the leaving itself."""
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_GRACE_SECONDS": "60"}
    server = Server(database_url, tmp_path_factory.mktemp("openai") / "gunicorn.log", **settings)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(autouse=True)
def left_idle(request):
    """Each test leaves the model idle for the next (a failed one may leave a reply running until its end)."""
    yield
    if "openai_server" in request.fixturenames:
        base = request.getfixturevalue("openai_server")
        wait_for(lambda: replies(base) == IDLE, 120, "an idle model")


def health(base: str, key: str | None = None) -> dict:
    """/health, which names the model and counts its replies for keyed requests only on a server with keys."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(f"{base}/health", headers=headers, timeout=10).json()


def replies(base: str, key: str | None = None) -> dict:
    return health(base, key)["model"]["replies"]


def sdk(base: str, key: str = "unused") -> openai.OpenAI:
    """The official client on chatapi; no retries, so that each request the test makes is one the server sees."""
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


def model_name(base: str, key: str | None = None) -> str:
    return health(base, key)["model"]["name"]


def complete(base: str, **params) -> requests.Response:
    return requests.post(f"{base}/v1/chat/completions", json={"model": "gemma-3-270m", **params}, timeout=120)


def assert_openai_error(response: requests.Response, status: int, kind: str, param=None, code=None) -> dict:
    """An error in OpenAI's shape, and nothing else in the body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["type"] == kind and error["param"] == param and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_the_model_list_and_the_model(openai_server):
    base = openai_server
    client = sdk(base)
    models = client.models.list().data
    name = model_name(base)
    assert [model.id for model in models] == [name]
    model = models[0]
    assert model.object == "model" and model.owned_by == "chatapi" and 1_500_000_000 < model.created <= time.time()
    assert client.models.retrieve(name) == model
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-4o")
    assert raised.value.code == "model_not_found" and raised.value.param == "model"


def test_a_completion(openai_server, app):
    base = openai_server
    before, rows = scrape(base), snapshot(app)
    completion = sdk(base).chat.completions.create(
        model=model_name(base),
        messages=[{"role": "system", "content": "Answer in one sentence."}, *ASK],
        max_tokens=24,
        temperature=0,
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == model_name(base)
    (choice,) = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Paris" in choice.message.content and choice.message.content == choice.message.content.lstrip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > len(QUESTION.split()) and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    # A reply of the chats' service: counted under its own mode, with its usage.
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_started_total", mode="openai") == 1
    assert moved(before, after, "chatapi_reply_completion_tokens_total", mode="openai") == usage.completion_tokens
    assert moved(before, after, "chatapi_reply_prompt_tokens_total", mode="openai") == usage.prompt_tokens
    assert snapshot(app) == rows  # nothing stored without CHATAPI_OPENAI_STORE


def test_the_system_messages_are_the_system_prompt(openai_server):
    base = openai_server

    def prompt_tokens(messages: list[dict]) -> int:
        return complete(base, messages=messages, max_tokens=1).json()["usage"]["prompt_tokens"]

    bare = prompt_tokens(ASK)
    system = {"role": "system", "content": "You are a geography teacher who answers briefly."}
    with_system = prompt_tokens([system, *ASK])
    assert with_system > bare
    # Wherever they stand, system (and developer) messages go to the head of the prompt, once.
    assert prompt_tokens([*ASK, system]) == with_system
    developer = {"role": "developer", "content": system["content"]}
    assert prompt_tokens([developer, *ASK]) == with_system
    # The list-of-parts form reads as the string.
    parts = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    assert prompt_tokens(parts) == bare


def test_a_stream_with_usage(openai_server):
    base = openai_server
    stream = sdk(base).chat.completions.create(
        model="gemma-3-270m",
        messages=ASK,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    first, *pieces, last, usage_chunk = chunks
    assert len({chunk.id for chunk in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert first.choices[0].delta.role == "assistant" and first.choices[0].finish_reason is None
    assert pieces and all(p.choices[0].delta.content and p.choices[0].finish_reason is None for p in pieces)
    assert last.choices[0].finish_reason in ("stop", "length") and last.choices[0].delta.content is None
    assert usage_chunk.choices == [] and all(chunk.usage is None for chunk in chunks[:-1])
    usage = usage_chunk.usage
    assert 0 < usage.completion_tokens <= 24 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    text = "".join(p.choices[0].delta.content for p in pieces)
    # The same greedy reply as a whole completion (whose prompt the stream's left in the cache).
    whole = complete(base, messages=ASK, max_tokens=24, temperature=0).json()
    assert text == whole["choices"][0]["message"]["content"] and "Paris" in text
    assert whole["usage"]["prompt_tokens"] == usage.prompt_tokens


def test_stop_strings(openai_server):
    base = openai_server
    client = sdk(base)
    params = {"model": "gemma-3-270m", "messages": ASK, "max_tokens": 24, "temperature": 0}
    free = client.chat.completions.create(**params).choices[0].message.content
    word = "Paris"
    assert word in free and not free.startswith(word), free
    expected = free[: free.index(word)]
    for stop in (word, ["no such text here", word], ["x" * MAX_STOP_CHARS, word]):
        choice = client.chat.completions.create(**params, stop=stop).choices[0]
        assert choice.message.content == expected and choice.finish_reason == "stop"
    streamed = client.chat.completions.create(**params, stop=[word], stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_client_that_leaves_mid_stream_frees_the_engine_at_once(openai_server):
    base = openai_server
    before = scrape(base)
    response = requests.post(
        f"{base}/v1/chat/completions",
        json=ENDLESS_STREAM,
        stream=True,
        timeout=60,
    )
    lines = response.iter_lines()
    contents = 0
    for line in lines:
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
            contents += 1
            if contents == 5:
                break
    assert replies(base) == {"running": 1, "waiting": 0}
    response.close()
    left = time.monotonic()
    wait_for(lambda: replies(base) == IDLE, 30, "the engine to be free")
    assert time.monotonic() - left < 10  # far sooner than the 60 s grace period
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_finished_total", mode="openai", finish_reason="cancelled") == 1
    assert 5 <= moved(before, after, "chatapi_reply_completion_tokens_total", mode="openai") < 2000
    # The engine serves the next request.
    assert complete(base, messages=ASK, max_tokens=4).status_code == 200


def test_a_client_that_leaves_before_its_whole_answer_frees_the_engine_at_once(openai_server):
    """A completion answered whole has no stream to break: the server watches the client's connection, and one
    that hangs up (a timeout, a closed program) stops its reply, which ran to max_tokens for nobody before."""
    base = openai_server
    before = scrape(base)
    address = urlsplit(base)
    body = json.dumps({"model": "gemma-3-270m", "messages": ENDLESS_MESSAGES, "max_tokens": 2000, "temperature": 0})
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode())
        wait_for(lambda: replies(base) == {"running": 1, "waiting": 0}, 30, "the reply to run")
        time.sleep(0.5)  # some tokens made
    left = time.monotonic()
    wait_for(lambda: replies(base) == IDLE, 30, "the engine to be free")
    assert time.monotonic() - left < 10  # far sooner than 2000 tokens take, or the 60 s grace period
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_finished_total", mode="openai", finish_reason="cancelled") == 1
    assert moved(before, after, "chatapi_reply_completion_tokens_total", mode="openai") < 2000
    assert complete(base, messages=ASK, max_tokens=4).status_code == 200  # the engine serves the next one


def test_messages_that_cannot_fit_whole_are_refused_as_openai_does(openai_server):
    """The older messages are left out to fit, but the system prompt, the latest user message and the last
    message are kept whole: when they alone are too long for the window, a 400 context_length_exceeded (a chat
    ending in such a message used to overflow the window: every running reply ended with a 500)."""
    base = openai_server
    before = scrape(base)
    long = "tell me more " * 5000  # some 15,000 tokens; the window is 4096
    for messages in (
        [*ASK, {"role": "assistant", "content": long}],
        [{"role": "user", "content": long}],
        [{"role": "system", "content": long}, *ASK],
    ):
        refused = complete(base, messages=messages, max_tokens=16)
        error = assert_openai_error(refused, 400, "invalid_request_error", "messages", "context_length_exceeded")
        assert "maximum context length is 4096 tokens" in error["message"]
    assert moved(before, scrape(base), "chatapi_replies_started_total", mode="openai") == 0
    # Long older turns are left out: the answer comes.
    older = [{"role": "user", "content": long}, {"role": "assistant", "content": long}]
    answered = complete(base, messages=[*older, *ASK], max_tokens=4, temperature=0)
    assert answered.status_code == 200 and answered.json()["usage"]["prompt_tokens"] < 4096


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages"),  # no user message
        ({"messages": [*ASK, {"role": "user", "content": [{"type": "image_url"}]}]}, "messages[1].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages[0].content[0].text"),
        ({"messages": ASK, "n": 2}, "n"),
        # Tools and response_format are served (tests/test_openai_tools.py, test_openai_structured.py); not these.
        ({"messages": ASK, "tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),  # no tools
        ({"messages": ASK, "response_format": {"type": "xml"}}, "response_format"),
        ({"messages": ASK, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": ASK, "logprobs": True}, "logprobs"),
        ({"messages": ASK, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": ASK, "logit_bias": {"1": 100}}, "logit_bias"),
        ({"messages": ASK, "temperature": "0.5"}, "temperature"),
        ({"messages": ASK, "temperature": 3}, "temperature"),
        ({"messages": ASK, "top_p": 1.5}, "top_p"),
        ({"messages": ASK, "max_tokens": 0}, "max_tokens"),
        ({"messages": ASK, "max_tokens": 2.5}, "max_tokens"),
        ({"messages": ASK, "max_completion_tokens": True}, "max_completion_tokens"),
        ({"messages": ASK, "seed": "1"}, "seed"),
        ({"messages": ASK, "stop": 5}, "stop"),
        ({"messages": ASK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": ASK, "stop": "x" * 200_000}, "stop"),  # the issue's: scanned a token, it stalled every reply
        ({"messages": ASK, "stop": ["\n", "x" * (MAX_STOP_CHARS + 1)]}, "stop"),
        ({"messages": ASK, "stream": "yes"}, "stream"),
        ({"messages": ASK, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"messages": ASK, "model": 7}, "model"),
    ],
)
def test_bad_input_is_a_bad_request_naming_the_parameter(openai_server, params, param):
    base = openai_server
    before = scrape(base)
    body = {"model": "gemma-3-270m", **params}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(base).chat.completions.create(**body)
    assert raised.value.status_code == 400 and raised.value.param == param, raised.value.body
    assert raised.value.type == "invalid_request_error"
    assert_openai_error(complete(base, **params), 400, "invalid_request_error", param, raised.value.code)
    assert moved(before, scrape(base), "chatapi_replies_started_total", mode="openai") == 0


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ("a\x00b", "messages[0].content"),
        ("\ud800", "messages[0].content"),
        ([{"type": "text", "text": "\udfff"}], "messages[0].content[0].text"),
        ("x" * 65537, "messages[0].content"),
    ],
)
def test_text_no_database_could_store_is_a_bad_request(openai_server, content, param):
    """As on the chat API (CHATAPI_OPENAI_STORE may store it): no NUL, no lone surrogate, no message longer than
    CHATAPI_MAX_MESSAGE_CHARS."""
    response = complete(openai_server, messages=[{"role": "user", "content": content}])
    assert_openai_error(response, 400, "invalid_request_error", param)


def test_harmless_unknown_fields_are_ignored(openai_server):
    base = openai_server
    response = complete(
        base,
        messages=[{"role": "user", "content": QUESTION, "name": "ada"}],
        max_tokens=2,
        user="someone",
        metadata={"a": "b"},
        presence_penalty=0,
        frequency_penalty=0,
        tool_choice="none",
        response_format={"type": "text"},
        n=1,
        logprobs=False,
        top_logprobs=0,
        stop=None,
        seed=None,
        stream_options=None,
        something_new={"x": 1},
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 2


def test_errors_on_v1_are_in_openais_shape(openai_server):
    base = openai_server
    assert_openai_error(requests.get(f"{base}/v1/no/such/route", timeout=10), 404, "not_found_error")
    assert_openai_error(requests.delete(f"{base}/v1/models", timeout=10), 405, "invalid_request_error")
    assert_openai_error(requests.get(f"{base}/v1/chat/completions", timeout=10), 405, "invalid_request_error")
    completions = f"{base}/v1/chat/completions"
    not_json = requests.post(completions, data="{", headers={"Content-Type": "application/json"}, timeout=10)
    assert_openai_error(not_json, 400, "invalid_request_error")
    valid = json.dumps({"model": "gemma-3-270m", "messages": ASK, "max_tokens": 1})
    as_text = requests.post(completions, data=valid, headers={"Content-Type": "text/plain"}, timeout=10)
    assert_openai_error(as_text, 415, "invalid_request_error")
    not_an_object = requests.post(f"{base}/v1/chat/completions", json=[ASK], timeout=10)
    assert_openai_error(not_an_object, 400, "invalid_request_error")
    huge = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x" * 1100000}]}
    too_large = requests.post(f"{base}/v1/chat/completions", json=huge, timeout=30)
    assert_openai_error(too_large, 413, "invalid_request_error")
    missing = requests.get(f"{base}/v1/models/gpt-4o", timeout=10)
    assert_openai_error(missing, 404, "not_found_error", "model", "model_not_found")
    # The chat API keeps its own shape.
    assert requests.get(f"{base}/no/such/route", timeout=10).json()["code"] == 404


def test_the_wire_format_of_a_stream(openai_server):
    """Exactly OpenAI's: `data: <one JSON line>` and a blank line per chunk (pings as comments), `data: [DONE]`
    last; no `event:` or `id:` lines."""
    base = openai_server
    for include_usage in (False, True):
        response = complete(
            base,
            messages=ASK,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
        text = response.text
        assert text.endswith("\n\ndata: [DONE]\n\n") and text.count("[DONE]") == 1
        events = [event for event in text.split("\n\n")[:-1] if not event.startswith(":")]
        assert events[-1] == "data: [DONE]"
        chunks = []
        for event in events[:-1]:
            assert event.startswith("data: {") and "\n" not in event, event
            chunks.append(json.loads(event[len("data: ") :]))
        keys = {"id", "object", "created", "model", "choices"} | ({"usage"} if include_usage else set())
        assert all(set(chunk) == keys for chunk in chunks), chunks
        assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
        choices = [chunk["choices"] for chunk in (chunks[:-1] if include_usage else chunks)]
        assert all(len(choice) == 1 and choice[0]["index"] == 0 for choice in choices)
        assert choices[0][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(set(choice[0]["delta"]) == {"content"} for choice in choices[1:-1])
        assert choices[-1][0]["delta"] == {} and choices[-1][0]["finish_reason"] in ("stop", "length")
        assert all(choice[0]["finish_reason"] is None for choice in choices[:-1])
        if include_usage:
            assert chunks[-1]["choices"] == [] and set(chunks[-1]["usage"]) == {
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "prompt_tokens_details",
            }
            assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_completions_wait_in_the_chats_queue(one_at_a_time_server, client):
    """One model, one queue: with one reply at a time, a completion waits for the chat reply before it."""
    base = one_at_a_time_server
    chat_id = new_chat(base, *ENDLESS)
    chat_reply = iter(EventStream(infer(base, chat_id, f"max_tokens=2000&{GREEDY}")))
    next(chat_reply)
    done = {}

    def ask():
        done["completion"] = complete(base, messages=ASK, max_tokens=4, temperature=0)

    asking = threading.Thread(target=ask)
    asking.start()
    wait_for(lambda: replies(base) == {"running": 1, "waiting": 1}, 30, "the completion to wait")
    time.sleep(0.5)
    assert "completion" not in done
    requests.post(f"{base}/conversations/stop/{chat_id}", timeout=10)
    asking.join(60)
    assert done["completion"].status_code == 200 and done["completion"].json()["choices"][0]["message"]["content"]


def test_keys_rate_limits_and_a_full_queue(start_server):
    """Keys, rate limits and the queue's depth apply here as on the chat API, answered in OpenAI's shape."""
    server = start_server(
        CHATAPI_API_KEYS=KEY, CHATAPI_RATE_LIMIT_REPLIES="3/minute", CHATAPI_PARALLEL="1", CHATAPI_QUEUE_SIZE="1"
    )
    base = server.url
    for wrong in ("wrong", KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as raised:
            sdk(base, wrong).models.list()
        assert raised.value.status_code == 401 and raised.value.type == "authentication_error"
    unauthorized = complete(base, messages=ASK)
    assert_openai_error(unauthorized, 401, "authentication_error", None, "invalid_api_key")
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")
    client = sdk(base, KEY)
    assert [model.id for model in client.models.list().data] == [model_name(base, KEY)]

    # The first reply runs (1 of 3 started); the queue holds one, so the next is refused (2 of 3: it asked).
    running = requests.post(
        f"{base}/v1/chat/completions",
        json=ENDLESS_STREAM,
        headers={"Authorization": f"Bearer {KEY}"},
        stream=True,
        timeout=60,
    )
    assert next(running.iter_lines()).startswith(b"data: {")
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="gemma-3-270m", messages=ASK, max_tokens=2)
    assert raised.value.status_code == 503 and raised.value.code == "queue_full"
    assert raised.value.response.headers["Retry-After"] == "5"
    running.close()
    wait_for(lambda: replies(base, KEY) == IDLE, 30, "the engine to be free")
    assert client.chat.completions.create(model="gemma-3-270m", messages=ASK, max_tokens=2).choices  # 3 of 3
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gemma-3-270m", messages=ASK, max_tokens=2)
    assert raised.value.code == "rate_limit_exceeded" and raised.value.type == "rate_limit_error"
    assert 0 < int(raised.value.response.headers["Retry-After"]) <= 60


def test_a_model_that_cannot_load_is_a_503_in_openais_shape(start_server, tmp_path):
    base = start_server(ready_status=503, CHATAPI_MODEL_PATH=str(tmp_path / "missing.gguf")).url
    listed = requests.get(f"{base}/v1/models", timeout=10)
    assert [m["id"] for m in listed.json()["data"]] == ["gemma-3-270m", "missing"]  # every model, the broken too
    unready = complete(base, messages=ASK, model="missing")
    assert_openai_error(unready, 503, "server_error", None, "model_not_ready")
    assert complete(base, messages=ASK, max_tokens=2).status_code == 200  # another model serves on


def test_a_follow_up_resent_with_its_history_reads_only_its_new_tokens(openai_server):
    """As every OpenAI client does: the whole conversation again, one answer and one question longer. The
    cache is found by the prompt's tokens (no chat id), even after other requests used other sequences."""
    base = openai_server
    first = [{"role": "system", "content": "You are a geography teacher."}, *ASK]
    before = complete(base, messages=first, max_tokens=16, temperature=0).json()
    for question in ("Name a colour.", "Name a fruit."):  # others meanwhile
        complete(base, messages=[{"role": "user", "content": question}], max_tokens=4)
    answer, usage = before["choices"][0]["message"]["content"], before["usage"]
    follow_up = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    cached = complete(base, messages=follow_up, max_tokens=4).json()["usage"]["prompt_tokens_details"]
    # The last prompt and nearly all of its answer (not the token that ended it, which was never read).
    read_before = usage["prompt_tokens"] + usage["completion_tokens"]
    assert read_before - 4 <= cached["cached_tokens"] < read_before, (usage, cached)


def test_a_chats_cache_serves_a_completion_and_stays_the_chats(openai_server, app, client):
    """A completion that begins as a chat's prompt copies the chat's cache; the chat's next turn still finds
    all of its own."""
    base = openai_server
    chat_id = new_chat(base, *ENDLESS)
    done = read_events(infer(base, chat_id, f"max_tokens=16&{GREEDY}"))[-1]["data"]
    chat_prompt = done["usage"]["prompt_tokens"]
    assert chat_prompt >= 128  # MIN_COPIED_PREFIX: long enough to copy
    messages = [
        {"role": "system", "content": app.config["CHATAPI_SYSTEM_PROMPT"]},
        *ENDLESS_MESSAGES,
        {"role": "assistant", "content": done["message"]["message"]},
        {"role": "user", "content": "Thank you."},
    ]
    usage = complete(base, messages=messages, max_tokens=4).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= chat_prompt
    add_message(base, chat_id, "Thank you.")
    again = read_events(infer(base, chat_id, f"max_tokens=4&{GREEDY}"))[-1]["data"]["usage"]
    assert again["cached_tokens"] >= chat_prompt + done["usage"]["completion_tokens"] - 4

"""/v1/completions (OpenAI's legacy completions) with the official `openai` package and plain HTTP, against the real
server and model: the prompt is continued as it is written, without the chat template. Nothing is stored, so these
run on SQLite only (conftest.SQLITE_ONLY)."""

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import llama_cpp
import openai
import pytest
import requests

from chatapi.llm.model import Vocabulary, default_model_path
from chatapi.llm.prompt import ContextLengthExceeded, PromptBuilder
from tests.support import wait_for
from tests.support.client import snapshot
from tests.support.metrics import moved, scrape
from tests.support.server import FAST_STREAM_SETTINGS, ROOT, Server
from tests.test_openai import IDLE, assert_openai_error, model_name, replies, sdk

MODEL_PATH = default_model_path(ROOT / "instance" / "models")
PROMPT = "The capital of France is"
# Over the engine's MIN_SHARED_PREFIX (16 tokens): once read, the prompt is found in the cache by its tokens.
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman and his three daughters. One"
# The model's own turn format written by the client: read as its control tokens, not as text.
TURNS = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
# A prompt that the model continues at temperature 0 with the same line over and over, for a reply that runs on.
ENDLESS = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


@pytest.fixture(scope="module")
def completions_server(app, database_url, tmp_path_factory):
    """A server whose grace period (60 s) is far longer than any test waits: a reply that ends sooner after its
    client left was ended by the leaving itself."""
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_GRACE_SECONDS": "60"}
    server = Server(database_url, tmp_path_factory.mktemp("completions") / "gunicorn.log", **settings)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(autouse=True)
def left_idle(request):
    """Each test leaves the model idle for the next."""
    yield
    if "completions_server" in request.fixturenames:
        base = request.getfixturevalue("completions_server")
        wait_for(lambda: replies(base) == IDLE, 120, "an idle model")


@pytest.fixture(scope="module")
def vocabulary():
    vocabulary = Vocabulary(MODEL_PATH)
    yield vocabulary
    vocabulary.close()


@pytest.fixture(scope="module")
def llama():
    """llama-cpp-python's own Llama on the same GGUF, for the greedy continuation of a prompt."""
    return llama_cpp.Llama(model_path=str(MODEL_PATH), n_ctx=512, verbose=False)


def warm(base: str, prompt: str) -> None:
    """Have the engine read the prompt, so that the requests that follow find it in its cache. A cached prompt's
    last token is read again alone (for its logits), and a one-token decode's numbers are not quite a batch's: in a
    near tie, a cold read's greedy text may differ from a warm one's. Texts compared at temperature 0 are all warm."""
    sdk(base).completions.create(model="gemma-3-270m", prompt=prompt, max_tokens=1, temperature=0)


def post(base: str, **params) -> requests.Response:
    body = {"model": "gemma-3-270m", **params}
    return requests.post(f"{base}/v1/completions", json=body, timeout=120)


def test_a_raw_prompt_is_the_text_as_it_is(vocabulary):
    """PromptBuilder.raw: the text's tokens after one BOS (the model wants one), no template's stop strings, never
    cut: one token over its budget is ContextLengthExceeded."""
    builder = PromptBuilder(vocabulary)
    prompt = builder.raw(PROMPT, 100)
    assert prompt.tokens == [vocabulary.weights.token_bos(), *vocabulary.tokenize(PROMPT)]
    assert prompt.stop == [] and prompt.truncated == 0
    assert builder.raw(vocabulary.bos + PROMPT, 100).tokens == prompt.tokens  # its own BOS is not doubled
    assert builder.raw(PROMPT, len(prompt.tokens)).tokens == prompt.tokens
    with pytest.raises(ContextLengthExceeded) as raised:
        builder.raw(PROMPT, len(prompt.tokens) - 1)
    assert raised.value.needed == len(prompt.tokens) and raised.value.budget == len(prompt.tokens) - 1


def test_a_completion_continues_the_prompt_as_written(completions_server, app, vocabulary, llama):
    """At temperature 0 the text is llama-cpp-python's greedy continuation of the very same prompt, and the prompt
    is counted as its own tokens and the BOS: no chat template, no system prompt."""
    base = completions_server
    before, rows = scrape(base), snapshot(app)
    completion = sdk(base).completions.create(model=model_name(base), prompt=PROMPT, max_tokens=8, temperature=0)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == model_name(base) and abs(completion.created - time.time()) < 60
    (choice,) = completion.choices
    assert choice.index == 0 and choice.logprobs is None and choice.finish_reason in ("stop", "length")
    expected = llama.create_completion(PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]
    assert choice.text == expected and choice.text.strip()  # white space included, as the model wrote it
    usage = completion.usage
    assert usage.prompt_tokens == len(vocabulary.tokenize(PROMPT)) + 1  # and the BOS
    assert 0 < usage.completion_tokens <= 8 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_started_total", mode="openai") == 1
    assert moved(before, after, "chatapi_reply_prompt_tokens_total", mode="openai") == usage.prompt_tokens
    assert snapshot(app) == rows  # nothing stored


def test_the_stream_tells_the_same_text(completions_server):
    base = completions_server
    client = sdk(base)
    warm(base, STORY)
    whole = client.completions.create(model=model_name(base), prompt=STORY, max_tokens=12, temperature=0)
    stream = client.completions.create(
        model=model_name(base),
        prompt=STORY,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "text_completion" and chunk.id == chunks[0].id for chunk in chunks)
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(texts) == whole.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in chunks[:-2]] == [None] * (len(chunks) - 2)
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_the_wire_format_of_a_stream(completions_server):
    """`data: <one JSON line>` per chunk, `data: [DONE]` last; `usage` in every chunk only when asked for."""
    base = completions_server
    for include_usage in (False, True):
        response = post(
            base,
            prompt=PROMPT,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/event-stream"
        events = [event for event in response.text.split("\n\n")[:-1] if not event.startswith(":")]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
        keys = {"id", "object", "created", "model", "choices"} | ({"usage"} if include_usage else set())
        assert all(set(chunk) == keys for chunk in chunks), chunks
        choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
        assert all(set(choice) == {"text", "index", "logprobs", "finish_reason"} for choice in choices)
        assert choices[-1]["text"] == "" and choices[-1]["finish_reason"] == "length"
        if include_usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 4
            assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_max_tokens_defaults_to_16_and_ends_at_length(completions_server):
    base = completions_server
    warm(base, STORY)
    completion = sdk(base).completions.create(model=model_name(base), prompt=STORY, temperature=0)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 16
    short = sdk(base).completions.create(model=model_name(base), prompt=STORY, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert completion.choices[0].text.startswith(short.choices[0].text)


def test_a_stop_string_ends_the_text_before_it(completions_server):
    base = completions_server
    client = sdk(base)
    warm(base, STORY)
    text = client.completions.create(model=model_name(base), prompt=STORY, max_tokens=16, temperature=0).choices[0].text
    words = text.split()
    assert len(words) >= 4, text
    stop = words[2]
    stopped = client.completions.create(
        model=model_name(base), prompt=STORY, max_tokens=16, temperature=0, stop=[stop, "never said"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


def test_echo_puts_the_prompt_before_the_text(completions_server):
    base = completions_server
    client = sdk(base)
    warm(base, STORY)
    plain = client.completions.create(model=model_name(base), prompt=STORY, max_tokens=6, temperature=0)
    echoed = client.completions.create(model=model_name(base), prompt=STORY, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == STORY + plain.choices[0].text
    assert echoed.usage.prompt_tokens == plain.usage.prompt_tokens  # echo changes the text, not the counts
    stream = client.completions.create(
        model=model_name(base), prompt=[STORY], max_tokens=6, temperature=0, echo=True, stream=True
    )
    texts = [chunk.choices[0].text for chunk in stream]
    assert texts[0] == STORY and "".join(texts) == echoed.choices[0].text


def test_the_models_turn_format_written_by_hand_is_read_as_such(completions_server, vocabulary):
    """Control tokens in the prompt are the model's own (as llama.cpp's server reads them): Gemma's turn format
    written by hand is one token a marker, and a BOS written first is not doubled."""
    base = completions_server
    warm(base, TURNS)
    completion = sdk(base).completions.create(model=model_name(base), prompt=TURNS, max_tokens=8, temperature=0)
    assert completion.usage.prompt_tokens == len(vocabulary.tokenize(TURNS)) + 1 == 16
    with_bos = sdk(base).completions.create(
        model=model_name(base), prompt=vocabulary.bos + TURNS, max_tokens=8, temperature=0
    )
    assert with_bos.usage.prompt_tokens == completion.usage.prompt_tokens
    assert with_bos.choices[0].text == completion.choices[0].text


def test_completions_share_the_batch(completions_server):
    """Several at once are batched by the same engine, beside a chat's reply, each answered in full."""
    base = completions_server
    client = sdk(base)
    before = scrape(base)
    results = []

    def ask(prompt: str):
        results.append(client.completions.create(model=model_name(base), prompt=prompt, max_tokens=8, temperature=0))

    def chat():
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        results.append(client.chat.completions.create(model=model_name(base), messages=messages, max_tokens=8))

    threads = [threading.Thread(target=ask, args=(prompt,)) for prompt in (STORY, STORY, PROMPT)]
    threads.append(threading.Thread(target=chat))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r.usage.completion_tokens <= 8 for r in results)
    texts = [r.choices[0].text for r in results if r.object == "text_completion"]
    assert len(texts) == 3 and all(texts)
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_started_total", mode="openai") == 4


def test_a_prompt_longer_than_the_window_is_refused_not_cut(completions_server):
    base = completions_server
    window = requests.get(f"{base}/health", timeout=10).json()["model"]["n_ctx"]
    response = post(base, prompt="word " * window, max_tokens=8)
    error = assert_openai_error(response, 400, "invalid_request_error", "prompt", "context_length_exceeded")
    assert f"maximum context length is {window} tokens" in error["message"]
    # One that fits only without its completion's room: refused too, as OpenAI does.
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(base).completions.create(model=model_name(base), prompt="word " * (window - 60), max_tokens=100)
    assert raised.value.code == "context_length_exceeded" and raised.value.param == "prompt"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "a\u0000b"}, "prompt"),
        ({"prompt": "x" * 70000}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": "0.5"}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"stop": ["a"] * 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"echo": 1}, "echo"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 0}, "logprobs"),
        ({"suffix": "the end"}, "suffix"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
    ],
)
def test_bad_input_is_a_bad_request_naming_the_parameter(completions_server, params, param):
    body = {"prompt": PROMPT, "max_tokens": 4, **params}
    body = {name: value for name, value in body.items() if not (name == "prompt" and value is None)}
    response = requests.post(f"{completions_server}/v1/completions", json={"model": "gemma-3-270m", **body}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and response.json()["error"]["type"] == "invalid_request_error"


def test_harmless_parameters_are_accepted_and_an_unknown_model_is_a_404(completions_server):
    base = completions_server
    harmless = {"n": 1, "best_of": 1, "logprobs": None, "suffix": "", "logit_bias": {}, "user": "u", "echo": False}
    response = post(base, prompt=PROMPT, max_tokens=2, presence_penalty=0.5, **harmless)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 2
    response = requests.post(
        f"{base}/v1/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "a"}, timeout=30
    )
    assert_openai_error(response, 404, "not_found_error", "model", "model_not_found")


def test_a_client_that_leaves_mid_stream_frees_the_engine_at_once(completions_server):
    base = completions_server
    before = scrape(base)
    body = {"model": "gemma-3-270m", "prompt": ENDLESS, "max_tokens": 2000, "temperature": 0, "stream": True}
    response = requests.post(f"{base}/v1/completions", json=body, stream=True, timeout=60)
    texts = 0
    for line in response.iter_lines():
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["text"]:
            texts += 1
            if texts == 5:
                break
    assert replies(base) == {"running": 1, "waiting": 0}
    response.close()
    left = time.monotonic()
    wait_for(lambda: replies(base) == IDLE, 30, "the engine to be free")
    assert time.monotonic() - left < 10  # far sooner than the 60 s grace period
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_finished_total", mode="openai", finish_reason="cancelled") == 1


def test_a_client_that_leaves_before_its_whole_answer_frees_the_engine_at_once(completions_server):
    base = completions_server
    before = scrape(base)
    address = urlsplit(base)
    body = json.dumps({"model": "gemma-3-270m", "prompt": ENDLESS, "max_tokens": 2000, "temperature": 0})
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode())
        wait_for(lambda: replies(base) == {"running": 1, "waiting": 0}, 30, "the reply to run")
        time.sleep(0.5)
    left = time.monotonic()
    wait_for(lambda: replies(base) == IDLE, 30, "the engine to be free")
    assert time.monotonic() - left < 10
    after = scrape(base)
    assert moved(before, after, "chatapi_replies_finished_total", mode="openai", finish_reason="cancelled") == 1


def test_the_remote_backend_sends_the_prompt_to_the_servers_completions(completions_server, database_url, tmp_path):
    """With CHATAPI_LLM_BACKEND=openai the prompt goes as it is to the model server's /v1/completions (here chatapi's
    own, on the local backend): the same text and counts as asking it directly, streamed or not."""
    base = completions_server
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": f"{base}/v1"}
    front = Server(database_url, tmp_path / "front.log", **settings).wait_until_up()
    try:
        params = {"model": "gemma-3-270m", "prompt": STORY, "max_tokens": 8, "temperature": 0, "stop": ["never said"]}
        warm(base, STORY)
        direct = sdk(base).completions.create(**params)
        through = sdk(front.url).completions.create(**params, echo=True)
        assert through.choices[0].text == STORY + direct.choices[0].text
        assert through.choices[0].finish_reason == direct.choices[0].finish_reason == "length"
        assert through.usage.prompt_tokens == direct.usage.prompt_tokens
        assert through.usage.completion_tokens == direct.usage.completion_tokens
        chunks = list(sdk(front.url).completions.create(**params, stream=True))
        assert "".join(chunk.choices[0].text for chunk in chunks) == direct.choices[0].text
        response = requests.post(f"{front.url}/v1/completions", json={**params, "prompt": "word " * 5000}, timeout=60)
        assert_openai_error(response, 400, "invalid_request_error", "prompt", "context_length_exceeded")
    finally:
        front.stop()


def test_nothing_is_stored_even_when_exchanges_are(app, database_url, client, tmp_path):
    """CHATAPI_OPENAI_STORE keeps chat exchanges as chats; a completion has no conversation to keep."""
    server = Server(database_url, tmp_path / "store.log", CHATAPI_OPENAI_STORE="1", **FAST_STREAM_SETTINGS)
    base = server.wait_until_up().url
    try:
        rows = snapshot(app)
        completion = sdk(base).completions.create(model="gemma-3-270m", prompt=PROMPT, max_tokens=4, temperature=0)
        assert completion.choices[0].text and completion.usage.completion_tokens <= 4
        time.sleep(0.5)  # a save would happen as the reply ends, before its answer: none comes late either
        assert snapshot(app) == rows
    finally:
        server.stop()

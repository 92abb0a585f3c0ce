"""/v1/embeddings with the official `openai` package and plain HTTP, against the real server and model (the bundled
Gemma 3 270M as its own embedding model). Nothing here touches the database: SQLite only (conftest.SQLITE_ONLY)."""

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import openai
import pytest
import requests

from chatapi.llm.model import Vocabulary, default_model_path
from config import Config
from tests.support.server import FAST_STREAM_SETTINGS, Server

MODEL = "gemma-3-270m"
DIMENSIONS = 640  # Gemma 3 270M's hidden size
N_CTX = Config.CHATAPI_EMBEDDING_N_CTX


@pytest.fixture(scope="module")
def base(app, database_url, tmp_path_factory):
    server = Server(database_url, tmp_path_factory.mktemp("embeddings") / "gunicorn.log", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def vocabulary(app):
    vocabulary = Vocabulary(default_model_path(os.path.join(app.instance_path, "models")))
    yield vocabulary
    vocabulary.close()


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in sorted(response.data, key=lambda item: item.index)])


def embed(base: str, **body) -> requests.Response:
    return requests.post(f"{base}/v1/embeddings", json={"model": MODEL, **body}, timeout=300)


def error_of(response: requests.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_a_string_is_one_normalised_vector(client):
    response = client.embeddings.create(model=MODEL, input="The cat sat on the mat.")
    assert response.object == "list" and response.model == MODEL
    assert [item.index for item in response.data] == [0] and response.data[0].object == "embedding"
    vector = vectors(response)[0]
    assert vector.shape == (DIMENSIONS,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_similar_texts_are_closer_than_unrelated_ones(client):
    texts = ["The cat sat on the mat.", "A cat is sitting on a rug.", "Quarterly revenue rose by four percent."]
    cat, rug, revenue = vectors(client.embeddings.create(model=MODEL, input=texts))
    assert cat @ rug > cat @ revenue and cat @ rug > rug @ revenue


def test_a_text_has_the_same_vector_batched_or_alone(client):
    """Within llama.cpp's kernels' rounding: a row's sums are made in another order in another place of a 16-row
    tile (chatapi/llm/embeddings.py), so batched and alone agree to a cosine similarity of 0.99999, not bit for bit."""
    texts = [f"short sentence number {i} about the weather today" for i in range(40)]
    batched = vectors(client.embeddings.create(model=MODEL, input=texts))
    for index in (0, 15, 39):
        alone = vectors(client.embeddings.create(model=MODEL, input=texts[index]))[0]
        assert batched[index] @ alone > 1 - 1e-4
        assert np.abs(batched[index] - alone).max() < 5e-3
    again = vectors(client.embeddings.create(model=MODEL, input=texts))
    assert np.abs(batched - again).max() < 1e-6  # the same request, the same decode: the same vectors


def test_prompt_tokens_are_the_tokens_read(client, vocabulary):
    texts = ["hello", "The quick brown fox jumps over the lazy dog."]
    response = client.embeddings.create(model=MODEL, input=texts)
    counted = sum(len(vocabulary.tokenize(text, add_bos=True)) for text in texts)
    assert response.usage.prompt_tokens == counted


def test_token_lists_are_read_as_given(client, vocabulary):
    text = "Token lists are embedded as they are."
    tokens = vocabulary.tokenize(text, add_bos=True)
    as_text = vectors(client.embeddings.create(model=MODEL, input=text))[0]
    one_list = client.embeddings.create(model=MODEL, input=tokens)
    assert one_list.usage.prompt_tokens == len(tokens)
    assert vectors(one_list)[0] @ as_text > 1 - 1e-5
    several = client.embeddings.create(model=MODEL, input=[tokens, tokens[:3]])
    assert several.usage.prompt_tokens == len(tokens) + 3 and len(several.data) == 2


def test_base64_is_the_float_vector(base, client):
    text = "base64 or floats"
    floats = np.array(embed(base, input=text).json()["data"][0]["embedding"], dtype=np.float32)
    encoded = embed(base, input=text, encoding_format="base64").json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert np.array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), floats)
    # The SDK asks for base64 by default and decodes it.
    assert np.abs(vectors(client.embeddings.create(model=MODEL, input=text))[0] - floats).max() < 1e-6


def test_dimensions_must_be_the_models(base, client):
    error = error_of(embed(base, input="x", dimensions=256))
    assert error["param"] == "dimensions" and "640" in error["message"]
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=DIMENSIONS).data[0].embedding) > 0


def test_an_over_long_input_is_named_by_its_index(base, client):
    words = " ".join(["word"] * (N_CTX + 10))
    error = error_of(embed(base, input=["short", "also short", "fine", words]))
    assert error["param"] == "input[3]" and error["code"] == "context_length_exceeded"
    assert f"at most {N_CTX}" in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MODEL, input=[[2] * 5, [2] * (N_CTX + 1)])
    assert raised.value.body["param"] == "input[1]"
    assert error_of(embed(base, input=words))["param"] == "input"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["fine", ""]}, "input[1]"),
        ({"input": ["fine", []]}, "input[1]"),
        ({"input": [[1, 2], [3, "x"]]}, "input[1]"),
        ({"input": [1, 2, 10**9]}, "input"),
        ({"input": [[5], [-1]]}, "input[1]"),
        ({"input": 3}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"model": None, "input": "x"}, "model"),
    ],
)
def test_bad_input_is_a_400_naming_it(base, body, param):
    assert error_of(embed(base, **body))["param"] == param


def test_an_unknown_model_is_a_404(base):
    assert error_of(embed(base, model="text-embedding-3-small", input="x"), 404)["code"] == "model_not_found"


def test_the_chat_model_answers_while_embeddings_are_made(base, client):
    texts = [f"sentence {i} of a long list to embed while the chat model answers" for i in range(300)]
    embedded = {}

    def embed_many():
        embedded["response"] = client.embeddings.create(model=MODEL, input=texts)

    worker = threading.Thread(target=embed_many)
    worker.start()
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    worker.join(300)
    assert answer.choices[0].message.content
    assert len(embedded["response"].data) == len(texts)
    after = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert after.choices[0].message.content == answer.choices[0].message.content


class FakeEmbeddingServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 that lists one model and answers /v1/embeddings with a fixed vector
    (or `status`), keeping the bodies it was sent."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(200, {"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

            def do_POST(self):
                server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                vector = {"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}
                answer = {"object": "list", "data": [vector], "model": "upstream-model", "usage": {"prompt_tokens": 2}}
                self.answer(server.status, answer if server.status == 200 else {"error": {"message": "no"}})

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def remote_base(app, database_url, tmp_path_factory):
    upstream = FakeEmbeddingServer()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    settings = {**FAST_STREAM_SETTINGS, "CHATAPI_LLM_BACKEND": "openai", "CHATAPI_LLM_URL": f"{upstream.url}/v1"}
    server = Server(database_url, tmp_path_factory.mktemp("remote-embeddings") / "gunicorn.log", **settings)
    yield server.wait_until_up().url, upstream
    server.stop()
    upstream.shutdown()


def test_the_remote_backend_forwards_to_its_server(remote_base):
    base, upstream = remote_base
    response = requests.post(
        f"{base}/v1/embeddings", json={"model": "upstream-model", "input": ["a", "b"], "user": "x"}, timeout=30
    )
    assert response.status_code == 200 and response.json()["data"][0]["embedding"] == [0.6, 0.8]
    assert upstream.bodies[-1] == {"model": "upstream-model", "input": ["a", "b"]}
    upstream.status = 500
    assert error_of(requests.post(f"{base}/v1/embeddings", json={"model": "upstream-model", "input": "a"}), 502)
    upstream.status = 200
    assert error_of(requests.post(f"{base}/v1/embeddings", json={"model": "other", "input": "a"}), 404)

"""CHATAPI_OPENAI_STORE=1: the OpenAI-compatible API's exchanges stored as chats, on both databases."""

import openai
import pytest
import requests

from tests.support import wait_for
from tests.support.server import FAST_STREAM_SETTINGS, Server

SYSTEM = "You are a geography teacher. Answer briefly."
QUESTION = "What is the capital of France?"
FOLLOW_UP = "And of Italy?"


@pytest.fixture(scope="module")
def storing_server(app, database_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("openai-store") / "gunicorn.log"
    server = Server(database_url, log, CHATAPI_OPENAI_STORE="1", **FAST_STREAM_SETTINGS)
    yield server.wait_until_up().url
    server.stop()


def sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def chats(base: str) -> list[dict]:
    return requests.get(f"{base}/chats/", timeout=10).json()


def messages_of(base: str, chat_id: str) -> list[tuple[str, str]]:
    return [(c["role"], c["message"]) for c in requests.get(f"{base}/chats/{chat_id}/conversations", timeout=10).json()]


def ask(base: str, messages: list[dict]) -> str:
    completion = sdk(base).chat.completions.create(
        model="gemma-3-270m", messages=messages, max_tokens=16, temperature=0
    )
    return completion.choices[0].message.content


def test_an_exchange_is_stored_as_a_chat_and_a_follow_up_continues_it(storing_server, client):
    base = storing_server
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    answer = ask(base, first)
    (chat,) = chats(base)
    assert chat["name"] == QUESTION and chat["system_prompt"] == SYSTEM
    assert messages_of(base, chat["id"]) == [("Human", QUESTION), ("Assistant", answer.strip())]

    # The client resends the whole conversation with the next question: the same chat grows.
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]
    follow_up = ask(base, second)
    (same,) = chats(base)
    assert same["id"] == chat["id"] and same["updated_at"] > chat["updated_at"]
    assert messages_of(base, chat["id"]) == [
        ("Human", QUESTION),
        ("Assistant", answer.strip()),
        ("Human", FOLLOW_UP),
        ("Assistant", follow_up.strip()),
    ]

    # Another conversation (here: without the system prompt) is a chat of its own; a streamed one is stored too.
    chunks = sdk(base).chat.completions.create(
        model="gemma-3-270m", messages=first[1:], max_tokens=16, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    wait_for(lambda: len(chats(base)) == 2, 30, "the streamed exchange to be stored")
    newest = chats(base)[0]
    assert newest["id"] != chat["id"] and newest["name"] == QUESTION and newest["system_prompt"] is None
    assert messages_of(base, newest["id"]) == [("Human", QUESTION), ("Assistant", streamed.strip())]


def test_a_long_first_message_names_the_chat_by_its_beginning(storing_server, client):
    base = storing_server
    long = "Tell me   about\nthe sea. " * 40
    assert ask(base, [{"role": "user", "content": long}]).strip()
    (chat,) = chats(base)
    assert len(chat["name"]) == 200 and chat["name"].endswith("…")
    assert chat["name"][:-1] == " ".join(long.split())[:199]
    assert messages_of(base, chat["id"])[0] == ("Human", long)

"""The chats the tests make on a live server, and the histories that make the model answer as they need."""

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



def as_history(messages) -> list[tuple[str, str]]:
    """(role, text) pairs for messages that alternate Human and Assistant, Human first."""
    return [(("Human", "Assistant")[i % 2], text) for i, text in enumerate(messages)]


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

"""The in-process tests' chats and messages, made through Flask's test client, and a snapshot of the database."""

import re

from chatapi.extensions import db

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def create_chat(client, name: str = "Chat 1") -> dict:
    response = client.post("/chats/create", json={"name": name})
    assert response.status_code == 201, response.json
    return response.json


def add_message(client, chat_id: str, message: str, role: str = "Human") -> dict:
    response = client.post("/conversations/create", json={"chat_id": chat_id, "role": role, "message": message})
    assert response.status_code == 201, response.json
    return response.json


def snapshot(app) -> list:
    """Every row of every table, to check that a request changed nothing."""
    with app.app_context():
        rows = [
            sorted(tuple(map(str, row)) for row in db.session.execute(table.select()))
            for table in db.metadata.sorted_tables
        ]
        db.session.remove()
        return rows

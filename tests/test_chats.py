"""The /chats/ routes against the API document's examples."""

import uuid
from datetime import UTC, datetime

import pytest

from tests.support.client import TIMESTAMP, add_message, create_chat, snapshot


def now() -> str:
    """The time now as the API writes it (milliseconds, truncated): the bounds of a request's "now"."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_create_chat_returns_the_chat_with_location(client):
    response = client.post("/chats/create", json={"name": "Chat 1"})
    assert response.status_code == 201
    chat = response.json
    assert set(chat) == {"id", "name", "system_prompt", "model", "created_at", "updated_at"}
    assert chat["model"] is None  # the server's default
    assert uuid.UUID(chat["id"])
    assert chat["name"] == "Chat 1" and chat["system_prompt"] is None  # the server's CHATAPI_SYSTEM_PROMPT
    assert TIMESTAMP.match(chat["created_at"]) and chat["created_at"] == chat["updated_at"]
    assert response.headers["Location"].endswith(f"/chats/{chat['id']}")
    assert client.get(response.headers["Location"]).json == chat


def test_create_chat_strips_the_name(client):
    response = client.post("/chats/create", json={"name": "  padded  "})
    assert response.status_code == 201
    assert response.json["name"] == "padded"


def test_get_chat(client):
    chat = create_chat(client)
    response = client.get(f"/chats/{chat['id']}")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.json == chat


def test_list_chats_newest_first_with_total(client):
    names = [f"chat {i}" for i in range(4)]
    for name in names:
        create_chat(client, name)
    response = client.get("/chats/")
    assert response.status_code == 200
    assert [c["name"] for c in response.json] == names[::-1]
    assert response.headers["X-Total-Count"] == "4"


def test_list_chats_orders_by_activity(client):
    old = create_chat(client, "old")
    create_chat(client, "new")
    add_message(client, old["id"], "hello")
    assert [c["name"] for c in client.get("/chats/").json] == ["old", "new"]


def test_list_chats_pagination_and_search(client):
    for i in range(7):
        create_chat(client, f"{'alpha' if i % 2 else 'beta'} {i}")
    page = client.get("/chats/?limit=2&offset=1")
    assert [c["name"] for c in page.json] == ["alpha 5", "beta 4"]
    assert page.headers["X-Total-Count"] == "7"
    found = client.get("/chats/?q=ALPHA&limit=2")
    assert [c["name"] for c in found.json] == ["alpha 5", "alpha 3"]
    assert found.headers["X-Total-Count"] == "3"
    assert client.get("/chats/?offset=100").json == []


def test_the_largest_offset_the_databases_take(client):
    """Found by fuzzing: an offset beyond SQLite's integer was a 500; it is a 422 now, the largest one works."""
    create_chat(client)
    largest = client.get(f"/chats/?offset={2**63 - 1}")
    assert largest.status_code == 200 and largest.json == []
    assert largest.headers["X-Total-Count"] == "1"
    too_large = client.get(f"/chats/?offset={2**63}")
    assert too_large.status_code == 422
    assert "offset" in too_large.json["errors"]


def test_search_ignores_case_beyond_ascii(client):
    """SQLite's own lower() folds ASCII only; both databases must find these as PostgreSQL does."""
    for name in ["École du soir", "petite école", "ÉCOLE", "Ωmega", "ωMEGA ω", "Привет мир", "ecole"]:
        create_chat(client, name)
    searches = {
        "ÉCOLE": ["ÉCOLE", "petite école", "École du soir"],
        "école": ["ÉCOLE", "petite école", "École du soir"],
        "ωmega": ["ωMEGA ω", "Ωmega"],
        "ПРИВЕТ": ["Привет мир"],
        "ECOLE": ["ecole"],
    }
    for q, names in searches.items():
        found = client.get("/chats/", query_string={"q": q})
        assert [c["name"] for c in found.json] == names, q
        assert found.headers["X-Total-Count"] == str(len(names))


def test_search_treats_like_wildcards_as_text(client):
    create_chat(client, "100% done")
    create_chat(client, "plain_name")
    create_chat(client, "other")
    assert [c["name"] for c in client.get("/chats/?q=%25").json] == ["100% done"]
    assert [c["name"] for c in client.get("/chats/?q=_").json] == ["plain_name"]


def test_update_chat_without_updated_at_uses_now(client):
    chat = create_chat(client)
    old = client.put(f"/chats/update/{chat['id']}", json={"name": "Old", "updated_at": "2023-08-05T14:48:00.000Z"})
    assert old.json["updated_at"] == "2023-08-05T14:48:00.000Z"
    before = now()
    response = client.put(f"/chats/update/{chat['id']}", json={"name": "Renamed"})
    after = now()
    assert response.status_code == 200
    updated = response.json
    assert updated["name"] == "Renamed"
    assert updated["created_at"] == chat["created_at"]
    assert before <= updated["updated_at"] <= after
    assert client.get(f"/chats/{chat['id']}").json == updated


def test_update_chat_stores_given_updated_at_in_utc(client):
    chat = create_chat(client)
    body = {"name": "Chat 1", "updated_at": "2023-08-05T16:48:00.123+02:00"}
    response = client.put(f"/chats/update/{chat['id']}", json=body)
    assert response.status_code == 200
    assert response.json["updated_at"] == "2023-08-05T14:48:00.123Z"
    assert client.get(f"/chats/{chat['id']}").json["updated_at"] == "2023-08-05T14:48:00.123Z"


def test_years_before_1000_keep_four_digits(client):
    """Found by fuzzing: strftime("%Y") writes the year 999 as "999", which is not the documented format."""
    chat = create_chat(client)
    response = client.put(f"/chats/update/{chat['id']}", json={"name": "old", "updated_at": "0999-12-31T23:59:59.5Z"})
    assert response.status_code == 200
    assert response.json["updated_at"] == "0999-12-31T23:59:59.500Z"
    assert client.get(f"/chats/{chat['id']}").json["updated_at"] == "0999-12-31T23:59:59.500Z"
    first = client.put(f"/chats/update/{chat['id']}", json={"name": "first", "updated_at": "0001-01-01T00:00:00Z"})
    assert first.json["updated_at"] == "0001-01-01T00:00:00.000Z"
    create_chat(client, "newer")
    assert [c["name"] for c in client.get("/chats/").json] == ["newer", "first"]


def test_update_chat_accepts_the_whole_object_back(client):
    chat = create_chat(client)
    body = dict(chat, name="Edited", updated_at="2023-08-05T14:48:00.000Z")
    response = client.put(f"/chats/update/{chat['id']}", json=body)
    assert response.status_code == 200
    assert response.json == dict(chat, name="Edited", updated_at="2023-08-05T14:48:00.000Z")


def test_a_chat_with_a_system_prompt_of_its_own(client):
    prompt = "  You are a pirate.\nAnswer in one line.  "
    response = client.post("/chats/create", json={"name": "Pirate", "system_prompt": prompt})
    assert response.status_code == 201
    chat = response.json
    assert chat["system_prompt"] == prompt  # stored as given, like a message
    assert client.get(f"/chats/{chat['id']}").json == chat
    assert client.get("/chats/").json == [chat]
    for blank in (None, "", " \n\t "):  # null or blank: the server's prompt
        created = client.post("/chats/create", json={"name": "plain", "system_prompt": blank})
        assert created.status_code == 201 and created.json["system_prompt"] is None


def test_update_sets_or_clears_the_system_prompt_and_keeps_what_it_is_not_given(client):
    chat = create_chat(client)
    set_prompt = client.put(f"/chats/update/{chat['id']}", json={"system_prompt": "Be brief."})
    assert set_prompt.status_code == 200
    assert set_prompt.json["system_prompt"] == "Be brief." and set_prompt.json["name"] == chat["name"]
    assert set_prompt.json["updated_at"] >= chat["updated_at"]
    renamed = client.put(f"/chats/update/{chat['id']}", json={"name": "Renamed"}).json
    assert (renamed["name"], renamed["system_prompt"]) == ("Renamed", "Be brief.")  # not given: kept
    both = {"name": "Both", "system_prompt": "Be long.", "updated_at": "2023-08-05T14:48:00.000Z"}
    assert client.put(f"/chats/update/{chat['id']}", json=both).json == dict(chat, **both)
    for blank in (None, "", "   "):
        client.put(f"/chats/update/{chat['id']}", json={"system_prompt": "again"})
        cleared = client.put(f"/chats/update/{chat['id']}", json={"system_prompt": blank})
        assert cleared.status_code == 200 and cleared.json["system_prompt"] is None
        assert client.get(f"/chats/{chat['id']}").json == cleared.json


@pytest.mark.parametrize("body", [{}, {"updated_at": "2023-08-05T14:48:00.000Z"}, {"id": "x", "created_at": "y"}])
def test_an_update_that_names_nothing_to_change_is_422(app, client, body):
    chat = create_chat(client)
    before = snapshot(app)
    response = client.put(f"/chats/update/{chat['id']}", json=body)
    assert response.status_code == 422
    assert set(response.json["errors"]) == {"name", "system_prompt", "model"}
    assert response.json["errors"]["name"] == ["Give name, system_prompt, model, or more than one."]
    assert snapshot(app) == before


def test_delete_chat_cascades_to_its_conversations(client):
    chat = create_chat(client)
    other = create_chat(client, "other")
    message = add_message(client, chat["id"], "hi")
    kept = add_message(client, other["id"], "stay")
    response = client.delete(f"/chats/delete/{chat['id']}")
    assert response.status_code == 200
    assert response.json == {"id": chat["id"], "deleted": True}
    assert client.get(f"/chats/{chat['id']}").status_code == 404
    assert client.get(f"/conversations/{message['id']}").status_code == 404
    assert client.get(f"/conversations/{kept['id']}").status_code == 200
    assert client.delete(f"/chats/delete/{chat['id']}").status_code == 404


def test_delete_cascades_in_the_database_itself(app, client):
    """The foreign key cascades even when rows are deleted outside the ORM (SQLite needs the pragma)."""
    import sqlalchemy as sa

    from chatapi.extensions import db

    chat = create_chat(client)
    add_message(client, chat["id"], "hi")
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM chats"))
        db.session.commit()
        assert db.session.scalar(sa.text("SELECT count(*) FROM conversations")) == 0

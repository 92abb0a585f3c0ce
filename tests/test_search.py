"""GET /search on both databases: words in any order, phrases, case beyond ASCII, names and messages, the same
order on both, bounds, and an index kept in step with every write (triggers on SQLite, a generated column on
PostgreSQL)."""

import flask_migrate
import pytest
import sqlalchemy as sa

from chatapi.extensions import db
from chatapi.models import Chat, Conversation
from chatapi.snippets import SNIPPET_CHARS, Query, snippet
from tests.support.client import add_message, create_chat, snapshot
from tests.support.database import reset_schema


def search(client, q: str, **params) -> list[dict]:
    response = client.get("/search", query_string={"q": q, **params})
    assert response.status_code == 200, response.json
    assert response.headers["X-Total-Count"].isdigit()
    return response.json


def marked(hit: dict) -> list[str]:
    """The words a hit marks, read from its snippet by its highlights."""
    return [hit["snippet"][h["start"] : h["end"]] for h in hit["highlights"]]


def test_a_word_said_in_a_message_is_found_with_its_snippet_and_marks(client):
    chat = create_chat(client, "Travel")
    message = add_message(client, chat["id"], "We took the night train to Vienna, then a bus.")
    add_message(client, chat["id"], "Nothing here.", role="Assistant")
    [hit] = search(client, "vienna")
    assert hit == {
        "chat_id": chat["id"],
        "chat_name": "Travel",
        "conversation_id": message["id"],
        "role": "Human",
        "created_at": message["created_at"],
        "snippet": "We took the night train to Vienna, then a bus.",
        "highlights": [{"start": 27, "end": 33}],
    }
    assert search(client, "tram") == []


def test_words_match_in_any_order_and_quotes_make_a_phrase(client):
    chat = create_chat(client, "Food")["id"]
    together = add_message(client, chat, "A strong black coffee, please.")["id"]
    apart = add_message(client, chat, "Coffee? Only black tea for me, and something strong.")["id"]
    assert {h["conversation_id"] for h in search(client, "strong coffee black")} == {together, apart}
    [hit] = search(client, '"black coffee"')
    assert hit["conversation_id"] == together and marked(hit) == ["black coffee"]
    assert search(client, '"coffee black"') == []
    # An unclosed quote runs to the end; anything but letters and digits separates words, so no word is an operator.
    assert [h["conversation_id"] for h in search(client, 'strong "black coffee')] == [together]
    assert search(client, "coffee -tea") != [] and search(client, "coffee OR nothing") == []


def test_case_is_folded_beyond_ascii_and_accents_are_kept(client):
    chat = create_chat(client, "Café society")["id"]
    loud = add_message(client, chat, "ON SE RETROUVE AU CAFÉ DE FLORE À SEPT HEURES")["id"]
    greek = add_message(client, chat, "Καλημέρα ΚΌΣΜΕ")["id"]
    hits = search(client, "café")
    assert [h["conversation_id"] for h in hits] == [None, loud]  # the chat's name first
    assert marked(hits[0]) == ["Café"] and marked(hits[1]) == ["CAFÉ"]
    assert [h["conversation_id"] for h in search(client, "κόσμε")] == [greek]
    assert search(client, "cafe") == []  # no accent folding: é is not e


@pytest.mark.parametrize(
    "text, query, marks",
    [
        ("नमस्ते दुनिया, आप कैसे हैं", "दुनिया", ["दुनिया"]),  # Devanagari: vowel signs and a virama
        ("مَرْحَبًا بِالْعَالَمِ", "مَرْحَبًا", ["مَرْحَبًا"]),  # Arabic with its vowel marks
        ("สวัสดี ชาวโลก", "สวัสดี", ["สวัสดี"]),  # Thai
        ("We flew to İstanbul in May", "İSTANBUL", ["İstanbul"]),
        ("ΣΊΣΥΦΟΣ and σίσυφος", "Σίσυφος", ["ΣΊΣΥΦΟΣ", "σίσυφος"]),  # final sigma
        ("see config.py and the e-mail", "config", ["config"]),
        ("see config.py and the e-mail", "config.py e-mail", ["config.py", "e-mail"]),
        ("pi is 3.14 or so", "3.14", ["3.14"]),
        ("pi is 3.14 or so", "14", ["14"]),
        ("naïve art", "naïve", ["naïve"]),
    ],
)
def test_words_of_any_script_and_with_punctuation_are_found_alike_on_both(client, text, query, marks):
    chat = create_chat(client, "Words")["id"]
    found = add_message(client, chat, text)["id"]
    add_message(client, chat, "दिन याद; 3 then 1 4; configure")  # the letters, digits or words apart, or longer
    hits = search(client, query)
    assert [h["conversation_id"] for h in hits] == [found]
    assert marked(hits[0]) == marks


def test_names_come_first_then_messages_by_relevance_then_newest(client):
    named = create_chat(client, "Orchid care")
    other = create_chat(client, "Garden")["id"]
    old = add_message(client, other, "My orchid has yellow leaves.")["id"]
    new = add_message(client, other, "An orchid by the window.")["id"]  # as long: recency decides
    dense = add_message(client, other, "Orchid, orchid, orchid: orchid!")["id"]
    hits = search(client, "ORCHID")
    assert [h["conversation_id"] for h in hits] == [None, dense, new, old]
    assert hits[0]["chat_id"] == named["id"] and hits[0]["role"] is None
    assert hits[0]["created_at"] == named["created_at"] and hits[0]["snippet"] == "Orchid care"
    assert marked(hits[1]) == ["Orchid", "orchid", "orchid", "orchid"]


def test_paging_and_the_total(client):
    chat = create_chat(client, "Many")["id"]
    ids = [add_message(client, chat, f"line {i} of the pangolin report")["id"] for i in range(7)]
    response = client.get("/search?q=pangolin&limit=3&offset=0")
    assert response.headers["X-Total-Count"] == "7"
    pages = [search(client, "pangolin", limit=3, offset=offset) for offset in (0, 3, 6)]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [h["conversation_id"] for page in pages for h in page] == ids[::-1]  # all alike: newest first


def indexed(app, backend: str, word: str) -> int:
    """How many messages the index itself holds the word for: on SQLite the FTS5 table's own entries, which a row
    deleted without its trigger would leave behind (and a later row, given the same rowid, would inherit)."""
    with app.app_context():
        if backend == "sqlite":
            sql = "SELECT count(*) FROM conversations_fts WHERE conversations_fts MATCH :word"
        else:
            sql = "SELECT count(*) FROM conversations WHERE search_vector @@ to_tsquery('simple', :word)"
        count = db.session.scalar(sa.text(sql), {"word": word})
        db.session.remove()
        return count


def test_a_deleted_message_or_chat_is_no_longer_found(app, client, backend):
    chat = create_chat(client, "Keep")["id"]
    gone = add_message(client, chat, "the wombat burrow")["id"]
    kept = add_message(client, chat, "another wombat")["id"]
    assert client.delete(f"/conversations/delete/{gone}").status_code == 200
    assert [h["conversation_id"] for h in search(client, "wombat")] == [kept]
    assert client.delete(f"/chats/delete/{chat}").status_code == 200  # its messages go by the cascade
    response = client.get("/search?q=wombat")
    assert response.json == [] and response.headers["X-Total-Count"] == "0"
    assert indexed(app, backend, "wombat") == 0


def test_an_edited_message_is_found_by_its_new_words_only(app, client, backend):
    chat = create_chat(client, "Edits")["id"]
    message = add_message(client, chat, "meet at the lighthouse")["id"]
    response = client.put(f"/conversations/update/{message}", json={"message": "meet at the harbour"})
    assert response.status_code == 200
    assert search(client, "lighthouse") == []
    assert [h["conversation_id"] for h in search(client, "harbour")] == [message]
    assert (indexed(app, backend, "lighthouse"), indexed(app, backend, "harbour")) == (0, 1)


def test_a_renamed_chat_is_found_by_its_new_name_only(client):
    chat = create_chat(client, "Kestrel sightings")["id"]
    assert client.put(f"/chats/update/{chat}", json={"name": "Falcon sightings"}).status_code == 200
    assert search(client, "kestrel") == []
    assert [h["chat_id"] for h in search(client, "falcon")] == [chat]


def test_an_imported_chat_is_found(client):
    document = {
        "chatapi_export": 1,
        "chat": {"name": "imported", "created_at": "2023-08-05T14:48:00Z", "updated_at": "2023-08-05T14:48:00Z"},
        "conversations": [
            {
                "role": "Human",
                "message": "What is a quokka?",
                "created_at": "2023-08-05T14:48:00Z",
                "updated_at": "2023-08-05T14:48:00Z",
            },
            {
                "role": "Assistant",
                "message": "A small marsupial.",
                "created_at": "2023-08-05T14:49:00Z",
                "updated_at": "2023-08-05T14:49:00Z",
            },
        ],
    }
    response = client.post("/chats/import", json=document)
    assert response.status_code == 201, response.json
    [hit] = search(client, "quokka")
    assert hit["chat_id"] == response.json["id"] and hit["created_at"] == "2023-08-05T14:48:00.000Z"


@pytest.mark.parametrize(
    "query, field",
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "?! -- ..."}, "q"),
        ({"q": "x" * 501}, "q"),
        ({"q": " ".join(f"w{i}" for i in range(33))}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "a", "limit": "0"}, "limit"),
        ({"q": "a", "limit": "101"}, "limit"),
        ({"q": "a", "offset": "-1"}, "offset"),
        ({"q": "a", "offset": "10001"}, "offset"),
        ({"q": "a", "limit": "ten"}, "limit"),
    ],
)
def test_bad_queries_are_a_422_naming_the_parameter(app, client, query, field):
    create_chat(client, "a")
    before = snapshot(app)
    response = client.get("/search", query_string=query)
    assert response.status_code == 422 and field in response.json["errors"], response.json
    assert snapshot(app) == before


def test_a_long_message_shows_a_window_around_the_first_match(client):
    chat = create_chat(client, "Long")["id"]
    text = "filler " * 100 + "the narwhal surfaced " + "after " * 100
    add_message(client, chat, text)
    [hit] = search(client, "narwhal")
    assert len(hit["snippet"]) <= SNIPPET_CHARS + 2
    assert hit["snippet"].startswith("…filler") and hit["snippet"].endswith("after…")
    assert marked(hit) == ["narwhal"]


def test_snippets_fold_white_space_and_count_code_points():
    query = Query.parse('"deep sea" 🐙 octopus')
    text, highlights = snippet(query, "An  🐙\n octopus of the Deep\tSea.")
    assert text == "An 🐙 octopus of the Deep Sea."
    assert [text[h["start"] : h["end"]] for h in highlights] == ["octopus", "Deep Sea"]  # 🐙 is no word
    assert [p.words for p in Query.parse("Or or OR ?!").phrases] == [("or",)]
    assert Query.parse('"a  b" c "a b"').fts5() == '"a b" AND "c"'
    assert Query.parse('x "y z').websearch() == '"x" "y z"'
    # Each database cuts a phrase with its own tokenizer: PostgreSQL's gets ASCII punctuation as spaces, as its text.
    assert Query.parse("config.py e-mail").fts5() == '"config.py" AND "e-mail"'
    assert Query.parse("config.py e-mail").websearch() == '"config py" "e mail"'
    # Marks belong to their word: a Devanagari word with its vowel signs and virama is one word.
    assert [p.words for p in Query.parse("नमस्ते مَرْحَبًا").phrases] == [("नमस्ते",), ("مَرْحَبًا",)]


def test_a_long_first_match_is_never_cut_out_of_its_snippet():
    text, highlights = snippet(Query.parse("k" * 150), "see " * 20 + "k" * 150 + " end" * 30)
    assert highlights and text[highlights[0]["start"] : highlights[0]["end"]].startswith("k" * 100)


def test_rows_written_before_the_index_existed_are_found_after_the_migration(app):
    """Migration 0007 fills the index from the rows there are."""
    with app.app_context():
        try:
            flask_migrate.downgrade(revision="0006")
            with db.engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM conversations"))
                conn.execute(sa.text("DELETE FROM chats"))
            chat = Chat("Axolotl tank")
            db.session.add(chat)
            db.session.add(Conversation(chat, "Human", "the salamander keeps its gills"))
            db.session.commit()
            db.session.remove()
            flask_migrate.upgrade()
            with app.test_request_context():
                client = app.test_client()
                assert [h["chat_name"] for h in search(client, "axolotl")] == ["Axolotl tank"]
                assert [h["snippet"] for h in search(client, "gills")] == ["the salamander keeps its gills"]
        finally:
            db.session.remove()
            reset_schema()


def test_a_message_longer_than_a_tsvector_holds_is_stored_and_found_by_its_start(app, client, monkeypatch):
    """With the message limit raised, a text whose words would need more than PostgreSQL's 1 MB tsvector is stored
    (PostgreSQL indexes its first 100,000 characters), not refused as if the database were down."""
    monkeypatch.setitem(app.config, "CHATAPI_MAX_MESSAGE_CHARS", 2_000_000)
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 4 * 1024 * 1024)
    chat = create_chat(client, "Long")["id"]
    text = "aardvark " + " ".join(f"w{i:x}" for i in range(160_000))  # 160,000 distinct words
    assert len(text) > 1_000_000
    message = add_message(client, chat, text)["id"]
    [hit] = search(client, "aardvark")
    assert hit["conversation_id"] == message and marked(hit) == ["aardvark"]

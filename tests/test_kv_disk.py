"""Chats' KV-cache states on disk (chatapi/llm/kv_files.py): saved after each reply, restored when the chat has no
sequence in memory (after a restart, or another chat took it), used only when the file's tokens begin the new prompt
and every setting it was made under is the server's. The real model and real servers; the file checks on real
files."""

import json
import logging
import os
import uuid
from pathlib import Path

import pytest
import requests

from chatapi.llm.kv_files import MAGIC, Identity, KvFiles, restorable
from tests.support import wait_for
from tests.support.chats import add_message, history, infer, new_chat
from tests.support.disk import fill
from tests.support.metrics import scrape, value
from tests.support.server import FAST_STREAM_SETTINGS, Server
from tests.support.sse import read_events

# A history of ~400 tokens that the model goes on with in words of its own (not a loop), so that a state restored
# wrongly would show in the reply.
STORY = (
    "Tell me a story about a lighthouse keeper.",
    "Once upon a time, on a rocky island far from the coast, there lived an old lighthouse keeper named Elias. "
    "Every evening he climbed the hundred and twelve steps of the tower, trimmed the wick, polished the great lens "
    "and watched the beam sweep across the dark water. Ships passed in the night, and their captains never knew "
    "his name, but they trusted his light. One winter a storm came that was worse than any he remembered. The wind "
    "tore shingles from the roof of his cottage and the waves climbed the rocks as if they wanted the tower itself. "
    "Late that night, through the rain, Elias saw a small fishing boat drifting towards the reef, its engine dead "
    "and its crew waving lanterns. He had no boat of his own and no radio that worked in such weather. ",
    "What did Elias do next? Tell me the rest of the story.",
)
TURN = "max_tokens=16&temperature=0"


def serve(database_url: str, log: Path, kv_dir: Path, **settings: str) -> Server:
    return Server(database_url, log, CHATAPI_KV_DIR=str(kv_dir), **FAST_STREAM_SETTINGS, **settings).wait_until_up()


def reply(base: str, chat_id: str) -> dict:
    done = read_events(infer(base, chat_id, TURN))[-1]
    assert done["event"] == "done", done
    return done["data"]


def state_file(kv_dir: Path, chat_id: str) -> Path:
    """The chat's saved state, once its writer has written it (a reply's save follows its `done`)."""
    wait_for(lambda: any(kv_dir.glob(f"*/{chat_id}")), seconds=30, what=f"chat {chat_id}'s saved state")
    return next(kv_dir.glob(f"*/{chat_id}"))


def saved_tokens(path: Path) -> int:
    with open(path, "rb") as file:
        assert file.read(len(MAGIC)) == MAGIC
        return json.loads(file.readline())["tokens"]


def test_a_chat_restored_after_a_restart_or_an_eviction_answers_as_a_cold_read(app, client, database_url, tmp_path):
    """Two chats with one history: one restored from its file after a restart, the other read cold, answer alike;
    a chat that other chats took out of memory restores its file; an edit reads cold and replaces it; deleting the
    chat deletes it."""
    kv_dir = tmp_path / "kv"
    one_at_a_time = {"CHATAPI_PARALLEL": "1", "CHATAPI_KV_CHATS": "2"}  # each state is of a context of 2 sequences
    server = serve(database_url, tmp_path / "first.log", kv_dir, **one_at_a_time)
    try:
        restored, cold = new_chat(server.url, *STORY), new_chat(server.url, *STORY)
        firsts = [reply(server.url, chat_id) for chat_id in (restored, cold)]
        for chat_id in (restored, cold):
            state_file(kv_dir, chat_id)
            add_message(server.url, chat_id, "And then? Go on.")
        state_file(kv_dir, cold).unlink()
    finally:
        server.stop()

    # Two sequences, one reply at a time: the cold chat reads into one, the restored chat's file goes into the other
    # (an empty one: no cache of the same history helps it).
    server = serve(database_url, tmp_path / "second.log", kv_dir, **one_at_a_time)
    base = server.url
    try:
        from_cold, from_file = reply(base, cold), reply(base, restored)
        assert from_cold["usage"]["cached_tokens"] == 0
        # Everything the first reply's turn read, and that reply, came from the file. (Its text is compared with the
        # same chat's kept in memory, below: a prompt read in one piece and one read on top of a cache may differ by
        # llama.cpp's rounding, which at a near tie changed a greedy token on one build.)
        assert from_file["usage"]["cached_tokens"] > firsts[0]["usage"]["prompt_tokens"]
        assert from_file["usage"]["prompt_tokens"] == from_cold["usage"]["prompt_tokens"]
        restored_path = state_file(kv_dir, restored)
        wait_for(lambda: saved_tokens(restored_path) > from_file["usage"]["prompt_tokens"], what="the state saved")

        # Another chat takes the cold chat's sequence, the least recently used; an edit of its history then finds a
        # file that no longer begins its prompt.
        reply(base, new_chat(base, "Hello there. Who are you?"))
        path = state_file(kv_dir, cold)
        before = saved_tokens(path)
        first_message = history(base, cold)[0]["id"]
        response = requests.delete(f"{base}/chats/{cold}/conversations", params={"after": first_message}, timeout=10)
        assert response.status_code == 200, response.text
        add_message(base, cold, f"Never mind the story. What is a lighthouse? {STORY[1]}")
        edited = reply(base, cold)
        assert edited["usage"]["cached_tokens"] < 64  # read cold (the template's opening may be shared)
        wait_for(lambda: path.exists() and saved_tokens(path) != before, seconds=30, what="the state replaced")
        assert saved_tokens(path) < before

        # The edited chat took `restored`'s sequence: its next turn restores its own file again, in this process.
        add_message(base, restored, "Thank you. One more sentence, please.")
        again = reply(base, restored)
        assert again["usage"]["cached_tokens"] > from_file["usage"]["prompt_tokens"]

        samples = scrape(base)
        assert value(samples, "chatapi_kv_states_total", event="read") >= 2  # `restored`, twice
        assert value(samples, "chatapi_kv_states_total", event="stale") == 1  # the edited chat
        assert value(samples, "chatapi_kv_disk_bytes") >= path.stat().st_size

        assert requests.delete(f"{base}/chats/delete/{restored}", timeout=10).status_code == 200
        wait_for(lambda: not any(kv_dir.glob(f"*/{restored}")), seconds=30, what="the deleted chat's state gone")
        assert any(kv_dir.glob(f"*/{cold}"))
    finally:
        server.stop()


def test_with_no_disk_budget_no_state_is_kept(app, client, database_url, tmp_path):
    kv_dir = tmp_path / "kv"
    server = serve(database_url, tmp_path / "server.log", kv_dir, CHATAPI_KV_DISK_MB="0")
    try:
        chat_id = new_chat(server.url, *STORY)
        first = reply(server.url, chat_id)
        add_message(server.url, chat_id, "And then?")
        assert reply(server.url, chat_id)["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]  # in memory
        assert not kv_dir.exists() or not any(kv_dir.glob("*/*"))
    finally:
        server.stop()


def test_a_full_disk_leaves_replies_whole_and_no_partial_file(app, client, database_url, small_disk, tmp_path):
    fill(small_disk)
    server = serve(database_url, tmp_path / "server.log", small_disk)
    try:
        chat_id = new_chat(server.url, *STORY)
        first = reply(server.url, chat_id)
        assert first["message"]["message"]
        wait_for(lambda: "could not be saved" in server.output(), seconds=30, what="the failed save logged")
        add_message(server.url, chat_id, "And then?")
        assert reply(server.url, chat_id)["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]  # in memory
    finally:
        server.stop()
    assert [path.name for path in small_disk.rglob("*") if path.is_file()] == ["filler"]


def test_a_negative_disk_budget_stops_the_server(app, client, database_url, tmp_path):
    server = Server(database_url, tmp_path / "server.log", CHATAPI_KV_DISK_MB="-1")
    assert "CHATAPI_KV_DISK_MB=-1.0: must be 0 (none kept) or more" in server.refusal()


# The files themselves

IDENTITY = Identity(model="a" * 64, n_ctx=4096, sequences=6, n_swa=0, llama_cpp="0.3.36")
TOKENS = list(range(1000, 1300))
STATE = os.urandom(4096)


def written(kv: KvFiles, chat_id: uuid.UUID, tokens=TOKENS, state=STATE, identity=IDENTITY) -> Path:
    kv.write(identity, chat_id, tokens, state)
    path = kv.path(identity, chat_id)
    wait_for(lambda: path.exists() and kv._pending == 0, seconds=10, what="the state written")
    return path


def test_a_state_is_read_back_for_a_prompt_it_begins(tmp_path):
    kv, chat_id = KvFiles(tmp_path, budget=10**9), uuid.uuid4()
    written(kv, chat_id)
    saved = kv.read(IDENTITY, chat_id, [*TOKENS, 7, 8])
    assert saved.tokens == TOKENS and saved.state == STATE and saved.usable == len(TOKENS)
    assert kv.counts["written"] == kv.counts["read"] == 1
    # Diverging early (the chat's history was edited): too little in common to be worth a restore; the stale file goes.
    assert kv.read(IDENTITY, chat_id, [*TOKENS[:100], 7, 8]) is None and not kv.path(IDENTITY, chat_id).exists()
    assert kv.counts["stale"] == 1
    assert kv.read(IDENTITY, uuid.uuid4(), TOKENS) is None  # no file


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-10],  # truncated state
        lambda data: data[:300],  # truncated tokens
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # one bit of the state flipped
        lambda data: b"not a state" + data,
        lambda data: data.replace(b'"n_ctx": 4096', b'"n_ctx": 2048'),  # made under another window
        lambda data: data.replace(b'"format": 1', b'"format": 0'),
        lambda data: data.replace(b'"state_bytes": 4096', b'"state_bytes": 409600000000'),  # no such allocation
    ],
)
def test_a_damaged_or_foreign_file_is_not_used_and_goes(tmp_path, damage, caplog):
    kv, chat_id = KvFiles(tmp_path, budget=10**9), uuid.uuid4()
    path = written(kv, chat_id)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        assert kv.read(IDENTITY, chat_id, [*TOKENS, 7]) is None
    assert not path.exists()
    assert f"chat {chat_id}" in caplog.text


def test_another_model_or_llama_cpp_finds_no_state(tmp_path):
    kv, chat_id = KvFiles(tmp_path, budget=10**9), uuid.uuid4()
    written(kv, chat_id)
    assert kv.read(Identity("b" * 64, 4096, 6, 0, "0.3.36"), chat_id, [*TOKENS, 7]) is None  # its own folder: none
    fewer_sequences = Identity(IDENTITY.model, 4096, 4, 0, "0.3.36")
    assert kv.read(fewer_sequences, chat_id, [*TOKENS, 7]) is None
    assert not kv.path(IDENTITY, chat_id).exists()  # made under CHATAPI_KV_CHATS=6: replaced at the reply's end
    written(kv, chat_id)
    newer = Identity(IDENTITY.model, 4096, 6, 0, "0.4.0")
    assert kv.read(newer, chat_id, [*TOKENS, 7]) is None
    assert not kv.path(IDENTITY, chat_id).exists()  # made by another llama.cpp: replaced at the reply's end


def test_the_least_recently_used_states_go_past_the_budget(tmp_path):
    size = len(written(KvFiles(tmp_path / "probe", 10**9), uuid.uuid4()).read_bytes())
    kv = KvFiles(tmp_path / "kv", budget=2 * size + size // 2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    written(kv, first)
    os.utime(kv.path(IDENTITY, first), (1, 1))
    written(kv, second)
    os.utime(kv.path(IDENTITY, second), (2, 2))
    assert kv.read(IDENTITY, first, [*TOKENS, 7]) is not None  # read: now the most recently used
    written(kv, third)
    assert [kv.path(IDENTITY, c).exists() for c in (first, second, third)] == [True, False, True]
    assert kv.counts["evicted"] == 1 and kv.disk_bytes == 2 * size


def test_a_failed_write_is_logged_and_skipped(tmp_path, caplog):
    (tmp_path / "kv").write_text("a file where the folder should be")  # as a full or read-only disk refuses
    kv, chat_id = KvFiles(tmp_path / "kv", budget=10**9), uuid.uuid4()
    with caplog.at_level(logging.ERROR):
        kv.write(IDENTITY, chat_id, TOKENS, STATE)
        wait_for(lambda: kv._pending == 0 and "could not be saved" in caplog.text, seconds=10, what="the failure")
    assert kv.read(IDENTITY, chat_id, TOKENS) is None
    assert kv.counts["failed"] == 1 and kv.counts["written"] == 0


def test_a_deleted_chats_state_goes_and_its_late_save_is_dropped(tmp_path):
    kv, chat_id = KvFiles(tmp_path, budget=10**9), uuid.uuid4()
    path = written(kv, chat_id)
    kv.remove(chat_id)
    assert not path.exists()
    kv.write(IDENTITY, chat_id, TOKENS, STATE)  # a reply's save on its way when the chat was deleted
    written(kv, uuid.uuid4())  # the writer went past it
    assert not path.exists()


def test_a_sliding_window_state_is_used_whole_or_within_its_window():
    assert restorable(saved_tokens=3000, usable=3000, n_swa=512)
    assert not restorable(saved_tokens=3000, usable=2990, n_swa=512)  # the window before token 2990 was not written
    assert restorable(saved_tokens=400, usable=300, n_swa=512)  # all of it is within the window
    assert restorable(saved_tokens=3000, usable=2000, n_swa=0)  # no sliding window: any prefix
    assert not restorable(saved_tokens=3000, usable=100, n_swa=0)  # too little to be worth a restore


def test_a_state_restored_after_a_restart_answers_as_the_same_chat_kept_in_memory(app, client, database_url, tmp_path):
    """At temperature 0 a chat restored from its file after a restart answers token for token as a chat with the
    same history whose state stayed in memory: the state is what the model's own cache held."""
    kv_dir = tmp_path / "kv"
    one_at_a_time = {"CHATAPI_PARALLEL": "1", "CHATAPI_KV_CHATS": "2"}
    server = serve(database_url, tmp_path / "first.log", kv_dir, **one_at_a_time)
    try:
        restored, kept = new_chat(server.url, *STORY), new_chat(server.url, *STORY)
        firsts = [reply(server.url, chat_id) for chat_id in (restored, kept)]
        assert firsts[0]["message"]["message"] == firsts[1]["message"]["message"]  # one history
        state_file(kv_dir, restored)
        for chat_id in (restored, kept):
            add_message(server.url, chat_id, "And then? Go on.")
        from_memory = reply(server.url, kept)
        assert from_memory["usage"]["cached_tokens"] > firsts[1]["usage"]["prompt_tokens"]
    finally:
        server.stop()
    server = serve(database_url, tmp_path / "second.log", kv_dir, **one_at_a_time)
    try:
        from_file = reply(server.url, restored)
        assert from_file["usage"]["cached_tokens"] == from_memory["usage"]["cached_tokens"]
        assert from_file["message"]["message"] == from_memory["message"]["message"]
    finally:
        server.stop()

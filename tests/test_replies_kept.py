"""What the reply service keeps in memory once replies are under way and over: the real service with the real model in
this process, and a budget for finished replies (CHATAPI_REPLIES_KEPT_MB) of a few short replies. Saving is not what
these tests are about: a stand-in takes the place of the database."""

import sys
import uuid

import pytest

from chatapi.llm.prompt import Message
from chatapi.llm.queue import ReplyService
from chatapi.llm.reply import ReplyRequest
from chatapi.llm.settings import ModelSettings
from config import Config
from tests.support import wait_for
from tests.support.chats import QUESTION
from tests.support.server import ROOT

BUDGET_MB = 0.03  # 31 KB: about six replies of 2 tokens, with what each reply holds besides its events (4 KB)


CONFIG = {name: getattr(Config, name) for name in dir(Config) if name.startswith("CHATAPI_")}


@pytest.fixture(scope="module")
def service() -> ReplyService:
    config = {**CONFIG, "CHATAPI_REPLIES_KEPT_MB": BUDGET_MB}
    settings = ModelSettings.from_config(config, str(ROOT / "instance" / "models"))
    service = ReplyService(settings)
    service.load()
    wait_for(lambda: service.status != "loading", 120, "the model")
    assert service.status == "ok", service.error
    return service


def saved(reply) -> dict:
    return {"id": str(reply.message_id), "message": reply.text}


def start(service: ReplyService, question: str, max_tokens: int = 2, resumable: bool = True):
    options = service.options_from({"max_tokens": max_tokens, "temperature": 0})
    history = (Message("Human", question),)
    request = ReplyRequest(uuid.uuid4(), "local", history, "", options, saved, uuid.uuid4(), resumable=resumable)
    return service.start(request)


def test_finished_replies_are_kept_within_the_budget_the_latest_first(service):
    chats, streams = [], {}
    for n in range(12):
        reply = start(service, f"Question {n}: {QUESTION}")
        streams[reply.chat_id] = list(reply.listen())
        assert "event: done" in streams[reply.chat_id][-1]
        chats.append(reply.chat_id)
        assert service.kept_total <= service.settings.kept_bytes
    kept = [chat for chat in chats if service.current(chat) is not None]
    assert 2 < len(kept) < len(chats) and kept == chats[-len(kept) :]  # the oldest went first
    replies = [service.current(chat) for chat in kept]
    assert sum(sys.getsizeof(event) for reply in replies for event in reply.events) < service.settings.kept_bytes
    assert all(reply.records is None and reply.pieces == [] for reply in replies)  # their SSE events only
    # A reconnect to a kept reply gets the rest of its events as they were sent.
    latest = replies[-1]
    assert list(latest.listen(after=1)) == streams[latest.chat_id][2:]


def test_a_reply_nobody_can_resume_is_kept_only_while_it_runs(service):
    """/v1's replies: its request holds one until its response is sent; nobody can come back for it after."""
    reply = start(service, QUESTION, resumable=False)
    assert service.by_chat[reply.chat_id] is reply
    records = list(reply.listen(records=True))
    assert records[-1][0] == "done" and records[-1][1]["message"]["message"]
    assert reply.chat_id not in service.by_chat and reply.chat_id not in service.kept


def test_a_reply_lets_go_of_its_prompt_once_the_model_has_read_it(service):
    reply = start(service, QUESTION, max_tokens=8)
    assert reply.job.prompt.tokens  # queued: the model has yet to read it
    stream = reply.listen()
    for event in stream:
        if '"content"' in event:  # a token: the model read the whole prompt before it
            break
    assert reply.job.prompt is None
    assert "event: done" in list(stream)[-1]
    assert reply.job.prompt is None and reply.reading_ahead is None
    # The hooks that hold internet mode's pages (the save) and its timings are let go with the reply.
    assert reply not in service.requests and reply not in service.research_timings


def test_a_negative_budget_is_refused_at_start():
    with pytest.raises(ValueError, match="CHATAPI_REPLIES_KEPT_MB=-1: must be 0 or more"):
        ModelSettings.from_config({**CONFIG, "CHATAPI_REPLIES_KEPT_MB": -1}, "models")

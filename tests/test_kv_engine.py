"""Chats' saved states inside the engine, on the real model (Gemma 3: a sliding-window model): a restored state gives
the logits of the one saved; one llama.cpp refuses leaves the sequence empty; a restored state's sequence is never
used short of its whole (its window); a copy made for a job of no chat is never overwritten by a restore before
llama.cpp carries it out; reading ahead that comes late never cuts its chat's reply; and a save waits while replies
run unless the chat's sequence goes to another chat, and is of the state its own reply left."""

import os
import uuid

import pytest

from chatapi.llm.engine import Engine, Job, Options
from chatapi.llm.kv_files import Saved
from chatapi.llm.model import Model, default_model_path
from chatapi.llm.prompt import Prompt
from tests.support.server import ROOT

FILLER = (
    "Every evening he climbed the hundred and twelve steps of the tower, trimmed the wick, polished the great lens "
    "and watched the beam sweep across the dark water. "
)


@pytest.fixture(scope="module")
def model():
    loaded = Model(str(default_model_path(ROOT / "instance" / "models")), n_ctx=1024, n_threads=2, sequences=3)
    yield loaded
    loaded.close()


@pytest.fixture
def engine(model):
    for sequence in range(model.sequences):
        model.forget(sequence, 0)
    return Engine(model, step_tokens=256)


def job(chat_id: uuid.UUID, tokens: list[int], max_tokens: int, out: list | None = None, **kind) -> Job:
    options = Options(max_tokens=max_tokens, temperature=0, top_p=1, seed=1)
    return Job(chat_id, Prompt(list(tokens), stop=[], truncated=0), options, (out if out is not None else []).append,
               **kind)


def text_of(engine: Engine, chat_id: uuid.UUID, tokens: list[int], max_tokens: int, **kind) -> tuple[str, int]:
    out: list[str] = []
    result = engine.generate(job(chat_id, tokens, max_tokens, out, **kind))
    return "".join(out), result.cached_tokens


def read(model: Model, tokens: list[int], sequence: int) -> None:
    model.forget(sequence, 0)
    for start in range(0, len(tokens), 256):
        chunk = tokens[start : start + 256]
        model.decode([(token, start + i, sequence, False) for i, token in enumerate(chunk)])


def test_a_restored_state_gives_the_logits_of_the_one_saved(model, engine):
    tokens = model.tokenize(FILLER * 30)[:700]
    read(model, tokens, 0)
    state = bytearray(model.save_state(0))
    assert model.restore_state(1, state)
    assert model.first_position(1) == len(tokens) - model.n_swa > 0  # a sliding-window model: its window only
    next_token = model.tokenize(" Then")[0]
    model.decode([(next_token, len(tokens), 0, True), (next_token, len(tokens), 1, True)])
    assert (model._logits[0] == model._logits[1]).all()


def test_llama_cpp_refuses_a_state_that_is_not_one(model, engine):
    assert not model.restore_state(2, bytearray(os.urandom(4096)))
    assert model.first_position(2) == -1  # left empty


def test_a_restored_state_is_used_whole_or_not_at_all(model, engine):
    """A chat's state of 700 tokens restored into a sequence holds only the window before its last token: a new
    chat that shares its opening and takes that sequence reads its prompt cold, and answers as it does alone."""
    opening = model.tokenize("<start_of_turn>user\nMy name is Zorblat and I live in Paris. I keep a lighthouse.")
    history = (opening + model.tokenize(FILLER * 20)[1:])[:700]
    question = model.tokenize(" Where do I live and what is my name?<end_of_turn>\n<start_of_turn>model\n")[1:]
    read(model, history, 0)
    state = bytearray(model.save_state(0))
    alone = text_of(engine, uuid.uuid4(), opening + question, 12)
    assert alone[1] == 0

    for sequence in range(model.sequences):
        model.forget(sequence, 0)
    engine = Engine(model, step_tokens=256)
    chat = uuid.uuid4()
    restoring = job(chat, [*history, *question], 1)
    restoring.restore = Saved(chat, list(history), state, len(history))
    assert engine.generate(restoring).cached_tokens == len(history)  # used whole: by its own chat
    restored = next(s for s in engine.sequences if s.chat_id == chat)
    for _ in range(model.sequences - 1):  # the other sequences used since
        engine.generate(job(uuid.uuid4(), model.tokenize("Hello there, how are you?"), 1))
    new_chat = uuid.uuid4()
    text, cached = text_of(engine, new_chat, opening + question, 12)
    assert restored.chat_id == new_chat  # it took the restored chat's sequence, the least recently used
    assert (text, cached) == (alone[0], 0)


def test_a_restore_never_overwrites_a_copy_that_llama_cpp_has_not_made_yet(model):
    """A job of no chat copies a chat's cache (llama.cpp copies the data at its next decode); a chat's restore
    admitted in the same step goes to another sequence, and the copy carries the history it was made from: the job
    answers as it does without that restore beside it."""
    other = model.tokenize("<start_of_turn>user\nMy name is Quentin and I live in Tokyo. " + FILLER * 6)[:250]
    mine = model.tokenize("<start_of_turn>user\nMy name is Zorblat and I live in Paris. " + FILLER * 6)[:250]
    question = model.tokenize(" Question: what is my name and where do I live? Answer: Your name is")[1:]

    def answer(with_restore: bool) -> str:
        for sequence in range(model.sequences):
            model.forget(sequence, 0)
        engine = Engine(model, step_tokens=512)
        restored_chat = uuid.uuid4()
        engine.generate(job(restored_chat, other, 1))  # sequence 0
        engine.generate(job(uuid.uuid4(), mine + question, 1))  # sequence 1
        state = bytearray(model.save_state(0))
        engine.sequences[0].chat_id = uuid.uuid4()  # its sequence went to another chat since
        out: list[str] = []
        by_prefix = job(uuid.uuid4(), mine + question, 10, out, by_prefix=True)  # copies sequence 1 to a free one
        new = [by_prefix]
        if with_restore:
            restoring = job(restored_chat, other + model.tokenize(" And then?")[1:], 2)
            restoring.restore = Saved(restored_chat, list(other), state, len(other))
            new.append(restoring)
        for _ in range(100):
            ended = engine.step(new)
            new = []
            if any(done is by_prefix for done, _ in ended):
                return "".join(out)
        raise AssertionError("the job did not end")

    alone = answer(with_restore=False)
    assert answer(with_restore=True) == alone and "Quentin" not in alone


def test_reading_ahead_that_comes_after_its_chats_reply_is_dropped(model, engine):
    head = model.tokenize("<start_of_turn>user\n" + FILLER * 3)
    rest = model.tokenize(" Sources: My name is Zorblat and I live in Paris. Question: my name? Answer: Your name is")
    chat = uuid.uuid4()
    alone = text_of(engine, chat, head + rest[1:], 8)[0]
    engine = Engine(model, step_tokens=64)
    for sequence in range(model.sequences):
        model.forget(sequence, 0)
    out: list[str] = []
    reply = job(chat, head + rest[1:], 8, out)
    new = [reply]
    for step in range(200):
        if step == 3:
            new = [job(chat, head, 1, read_only=True)]  # its chat's saved state was read late
        ended = engine.step(new)
        new = []
        if any(done is reply for done, _ in ended):
            break
    assert "".join(out) == alone


def test_a_save_waits_while_replies_run_unless_the_chats_sequence_goes(model, engine):
    """A save's copy is made when the model's thread asks (it does while no reply runs), not to delay running
    replies' steps; but a chat whose sequence another chat takes meanwhile is saved first, cut to the prefix its next
    prompt begins with. An order that comes after the chat's next reply started is of no use and dropped."""
    text = model.tokenize(FILLER * 40)
    assert len(text) > 800
    d, a, b, c = (uuid.uuid4() for _ in range(4))
    engine.generate(job(d, text[:150], 2))  # sequence 0
    prompt = text[150:450]
    a_reply = job(a, prompt, 4)
    engine.generate(a_reply)  # sequence 1: the prompt and 3 tokens of its reply
    running = job(b, text[:200], 40)  # sequence 2
    engine.step([running])
    engine.save(a, [*prompt, 7], a_reply)  # its next prompt goes on from its prompt
    engine.step([])
    assert engine.unsaved and not engine.saved  # still waiting

    # A new chat takes the least recently used free sequence, next to the running one: `a`'s.
    c_reply = job(c, text[500:700], 2)
    engine.step([c_reply])
    [(chat_id, tokens, state)] = engine.take_saved()
    assert chat_id == a and tokens == prompt and len(state) > 0
    while any(slot.job is running for slot in engine.slots):
        engine.step([])

    engine.generate(job(a, [*prompt, 7, 8], 2))
    engine.save(a, [*prompt, 7], a_reply)  # late: `a`'s next reply has run since
    engine.save(c, text[500:700], c_reply)
    engine.save_next()
    engine.save_next()
    assert [chat_id for chat_id, _, _ in engine.take_saved()] == [c] and not engine.unsaved

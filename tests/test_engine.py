"""The engine's sampling loop on a scripted model: what reaches the listener when a reply ends.

The real model cannot be made to end with an end-of-generation token right after text that looks like
the start of a stop string, so a stub plays the model here: the test is about the engine's bookkeeping,
not about llama.cpp (test_prompt.py and test_inference.py run the real model). The tests of tokens llama.cpp
refuses run the real model, since what they are about is how llama.cpp fails.
"""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatapi.llm.engine import Engine, Job, Options
from chatapi.llm.loaded import Threads, other_cpu_seconds, thread_cpu_seconds
from chatapi.llm.model import Model, default_model_path
from chatapi.llm.prompt import Message, Prompt, PromptBuilder
from chatapi.llm.stops import StopScanner
from tests.support.server import ROOT

END = 0


class ScriptedModel:
    """Samples the scripted pieces in order, then the end-of-generation token."""

    n_ctx = 4096
    sequences = 1
    n_swa = 0  # no sliding window: every cached prefix can be used

    def first_position(self, sequence: int) -> int:
        return 0

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces
        self.evaluated: list[int] = []

    def forget(self, sequence: int, from_position: int) -> None:
        pass

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        self.evaluated.extend(token for token, _position, _sequence, _logits in entries)

    def sampler(self, temperature: float, top_p: float, seed: int, grammar: str | None = None) -> None:
        return None

    def sample(self, sampler, index: int = -1) -> int:
        produced = sum(1 for token in self.evaluated if token >= 100)
        return 100 + produced if produced < len(self.pieces) else END

    def is_end(self, token: int) -> bool:
        return token == END

    def piece(self, token: int) -> bytes:
        return self.pieces[token - 100]


def generate(pieces: list[bytes], stops: list[str]) -> tuple[str, str]:
    texts: list[str] = []
    prompt = Prompt(tokens=[1, 2, 3], stop=stops, truncated=0)
    job = Job("chat", prompt, Options(max_tokens=50, temperature=0, top_p=1, seed=1), on_text=texts.append)
    result = Engine(ScriptedModel(pieces)).generate(job)
    return "".join(texts), result.finish_reason


@pytest.mark.parametrize(
    ("pieces", "reply"),
    [
        # "\nHu" could have been the start of "\nHuman:" and was held back; the model then ended.
        ([b"Paris.", b"\nHu"], "Paris.\nHu"),
        # Held back across two pieces.
        ([b"Paris.", b"\n", b"Hum"], "Paris.\nHum"),
        # Half a UTF-8 character when the model ends: the decoder's replacement, not silence.
        ([b"caf", b"\xc3"], "caf\ufffd"),
    ],
)
def test_text_held_back_is_flushed_at_an_end_of_generation_token(pieces, reply):
    assert generate(pieces, ["\nHuman:"]) == (reply, "stop")


def test_a_stop_string_is_never_streamed():
    assert generate([b"Paris.", b"\nHu", b"man:", b" more"], ["\nHuman:"]) == ("Paris.", "stop")


class NaiveStopScanner:
    """The stop scanner as it was: every start of every stop string checked for each token. The reference that
    StopScanner must match."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


# Few letters, so that stop strings, their repeated starts (aab, abab) and near misses come up often.
SMALL_TEXT = st.text(alphabet="ab\n", max_size=8)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(stops=st.lists(SMALL_TEXT, max_size=4), pieces=st.lists(SMALL_TEXT, max_size=12))
def test_the_stop_scanner_passes_on_what_the_naive_one_did(stops, pieces):
    """Piece by piece the same text out and the same stop; fed on after a stop (or flushed), the same again."""
    scanner, naive = StopScanner(stops), NaiveStopScanner(stops)
    for piece in pieces:
        assert scanner.feed(piece) == naive.feed(piece), (stops, pieces)
    assert scanner.flush() == naive.flush()


class CountingString(str):
    """A stop string that counts how often its characters are read."""

    reads = 0

    def __getitem__(self, index):
        CountingString.reads += 1
        return str.__getitem__(self, index)


def test_a_long_stop_string_costs_no_more_a_token():
    """The scanner's work per token does not grow with the stop strings' length: a 100,000-character one read
    once to build its table, then a few characters' worth a token (every start of it a token was 185 ms)."""
    stop = CountingString("x" * 99_999 + "y")
    scanner = StopScanner([stop, "\nHuman:"])
    built = CountingString.reads
    assert built <= 10 * len(stop)
    for _ in range(200):
        assert scanner.feed("xxxx") == ("", False)  # held back: it could be the stop string's start
    assert CountingString.reads - built <= 10 * 200 * 4
    assert scanner.feed("y") == ("x" * 800 + "y", False)  # it was not


class EndlessModel(ScriptedModel):
    """Six KV sequences; replies go on until their max_tokens."""

    sequences = 6

    def __init__(self):
        super().__init__([b"x"])
        self.batches: list[list[int]] = []  # each decode's entries' sequence ids
        self.copies: list[tuple[int, int, int]] = []  # (source, target, length)

    def copy(self, source: int, target: int, length: int) -> None:
        self.copies.append((source, target, length))

    def sample(self, sampler, index: int = -1) -> int:
        return 100

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        super().decode(entries)
        self.batches.append([sequence for _token, _position, sequence, _logits in entries])


def job(chat: str, max_tokens: int) -> Job:
    options = Options(max_tokens=max_tokens, temperature=0, top_p=1, seed=1)
    return Job(chat, Prompt([1, 2, 3], [], 0), options, on_text=list().append)


def test_a_new_chat_takes_a_sequence_beside_the_running_ones():
    """llama.cpp computes a step over every sequence between the batch's lowest and highest id, so a new chat
    takes, of the free sequences, the least recently used of those nearest the running ones; with nothing
    running, simply the least recently used."""
    engine = Engine(EndlessModel())
    for chat in "abcdef":  # sequences 0 to 5, used in that order
        engine.generate(job(chat, 1))
    assert [s.chat_id for s in engine.sequences] == list("abcdef")
    engine.step([job("e", 100)])  # e's reply runs on sequence 4
    engine.step([job("new", 100)])
    assert engine.sequences[3].chat_id == "new"  # not sequence 0, a's: 4 and 0 would make a step of 5
    engine.step([job("newer", 100)])
    # Sequences 2 and 5 are as near to 3 and 4; 2 (c's) was used before 5 (f's).
    assert engine.sequences[2].chat_id == "newer"
    assert engine.sequences[5].chat_id == "f"
    # The running replies' tokens go to llama.cpp in sequence order (it splits a batch out of order).
    engine.step([])
    assert engine.model.batches[-1] == [2, 3, 4]


def test_prompts_no_longer_than_a_step_are_read_whole_and_long_ones_in_chunks():
    """Replies asked together start together (a short prompt is not split over steps, whatever the room left), while
    a long prompt stalls the running replies one chunk of step_tokens at a time."""
    model = EndlessModel()
    engine = Engine(model, step_tokens=4)
    engine.step([job("running", 100)])
    engine.step([job("a", 100), job("b", 100), job("c", 100)])  # 3 prompts of 3 tokens beside a running reply
    assert sorted(model.batches[-1]) == [0] + [1] * 3 + [2] * 3 + [3] * 3
    assert all(slot.pending is not None for slot in engine.slots)  # all four have their first token
    model = EndlessModel()
    engine = Engine(model, step_tokens=4)
    engine.step([job("running", 100)])
    long = Job("long", Prompt(list(range(1, 11)), [], 0), Options(100, 0, 1, 1), on_text=list().append)
    for _ in range(4):
        engine.step([long] if long not in [slot.job for slot in engine.slots] else [])
    # Ten tokens beside the running reply's one: three a step, then the last.
    assert model.batches[-4:] == [[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1]]


class ThreadCountingModel:
    def __init__(self):
        self.set_to: list[int] = []

    def set_threads(self, n_threads: int) -> None:
        self.set_to.append(n_threads)


def test_the_model_leaves_a_core_while_other_work_needs_one():
    """One thread fewer while the rest of the machine uses more than OTHERS_LIMIT of a core, all again after;
    a single thread stays."""
    model = ThreadCountingModel()
    threads = Threads(model, 2, loop_thread=0)
    threads.set(threads.wanted(0.1))
    assert model.set_to == []
    threads.set(threads.wanted(Threads.OTHERS_LIMIT + 0.3))
    threads.set(threads.wanted(1.5))
    assert model.set_to == [1]
    threads.set(threads.wanted(0.2))
    assert model.set_to == [1, 2]
    four = Threads(ThreadCountingModel(), 4, loop_thread=0)
    assert four.wanted(1.5) == 3


def test_other_work_while_the_model_was_idle_leaves_it_all_its_threads(monkeypatch):
    """A reading that spans the model's idle time (longer than STALE) is not averaged: the work then is over."""
    readings = iter([0.0, 5.0, 5.0, 5.2])  # CPU seconds of other work: 5 s of it while the model was idle
    monkeypatch.setattr("chatapi.llm.loaded.other_cpu_seconds", lambda loop_thread: next(readings))
    model = ThreadCountingModel()
    threads = Threads(model, 2, loop_thread=0)
    threads.adjust(0.0)
    threads.current = 1  # as one thread fewer was running when the model went idle
    threads.adjust(3.0)  # 3 s later: its first step after the idle time
    assert model.set_to == [2]
    threads.adjust(3.2)  # no other work since: still all
    threads.adjust(3.4)  # 1 core of other work for the last 0.2 s: one fewer
    assert model.set_to == [2, 1]


def test_the_event_loops_own_work_is_read_apart_from_the_models_threads():
    """What the model's thread subtracts from the machine's CPU is this process's, but for the event loop's:
    the loop's thread is read alone (a busy other thread of the process, as the model's are, is not in it)."""
    loop_thread = threading.get_native_id()

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    before = thread_cpu_seconds(loop_thread)
    spin(0.6)  # the loop's own work
    after_loop = thread_cpu_seconds(loop_thread)
    worker = threading.Thread(target=spin, args=(0.6,))
    worker.start()
    worker.join()
    after_worker = thread_cpu_seconds(loop_thread)
    assert after_loop - before >= 0.3
    assert after_worker - after_loop < 0.1
    assert other_cpu_seconds(loop_thread) is not None


def reading_ahead(chat: str, tokens: list[int]) -> Job:
    options = Options(max_tokens=1, temperature=0, top_p=1, seed=1)
    return Job(chat, Prompt(tokens, [], 0), options, on_text=list().append, read_only=True)


def test_reading_ahead_fills_the_chats_cache_for_its_next_job():
    """Internet mode reads a chat's history while it searches: the read-only job reads its prompt in chunks,
    never asks for logits, ends unreported, and the chat's next job finds the tokens cached."""
    model = EndlessModel()
    engine = Engine(model, step_tokens=4)
    history = list(range(1, 11))
    assert engine.step([reading_ahead("a", history)]) == []
    assert engine.step([]) == [] and engine.step([]) == []
    assert engine.slots == []  # ten tokens read four at a time: gone after the third step
    assert [s.tokens for s in engine.sequences if s.chat_id == "a"] == [history]
    assert model.evaluated == history
    answer = Job("a", Prompt([*history, 50, 51], [], 0), Options(2, 0, 1, 1), on_text=list().append)
    result = engine.generate(answer)
    assert result.cached_tokens == len(history) and result.finish_reason == "length"
    assert model.evaluated[len(history) : len(history) + 2] == [50, 51]  # only the new tokens were read


def test_the_chats_job_takes_over_a_reading_ahead_half_way():
    model = EndlessModel()
    engine = Engine(model, step_tokens=4)
    history = list(range(1, 11))
    engine.step([reading_ahead("a", history)])  # four of ten read
    answer = Job("a", Prompt([*history, 50], [], 0), Options(1, 0, 1, 1), on_text=list().append)
    result = engine.generate(answer)
    assert result.cached_tokens == 4
    assert model.evaluated == [*history, 50]  # nothing read twice


def test_reading_ahead_gives_way_when_a_job_needs_its_sequence_or_is_cancelled():
    engine = Engine(EndlessModel(), step_tokens=2)
    for chat in "abcde":  # five replies running on five of six sequences
        engine.step([job(chat, 100)])
    engine.step([reading_ahead("reader", list(range(1, 41)))])
    assert len(engine.slots) == 6
    engine.step([job("late", 100)])  # no sequence free: the reading ahead stops, the reply runs
    assert sorted(slot.job.chat_id for slot in engine.slots) == sorted("abcde") + ["late"]
    assert not any(slot.job.read_only for slot in engine.slots)

    # All six sequences run replies now: reading ahead is not admitted.
    assert engine.step([reading_ahead("reader", [1, 2])]) == [] and len(engine.slots) == 6
    assert not any(slot.job.read_only for slot in engine.slots)

    other = Engine(EndlessModel(), step_tokens=2)
    reader = reading_ahead("reader", list(range(1, 41)))
    other.step([reader])
    reader.cancelled = True
    assert other.step([]) == [] and other.slots == []


def no_chat_job(chat: str, tokens: list[int], max_tokens: int = 3) -> Job:
    """A job of the OpenAI-compatible API: an id of its own, its cache found by its prompt's tokens."""
    options = Options(max_tokens=max_tokens, temperature=0, top_p=1, seed=1)
    return Job(chat, Prompt(tokens, [], 0), options, on_text=list().append, by_prefix=True)


def sequence_of(engine: Engine, chat: str):
    return next(s for s in engine.sequences if s.chat_id == chat)


def test_a_job_of_no_chat_takes_over_the_sequence_that_begins_its_prompt():
    """A client resending its growing conversation: the next request reads only the new tokens, in the
    sequence the last one left, even after other chats used the sequences since."""
    model = EndlessModel()
    engine = Engine(model)
    first = list(range(1, 31))
    engine.generate(no_chat_job("x1", first))
    held = list(sequence_of(engine, "x1").tokens)
    assert held[:30] == first and len(held) == 32  # the prompt and the replies' tokens fed back
    for chat in "abcde":  # the five other sequences
        engine.generate(job(chat, 1))
    evaluated = len(model.evaluated)
    result = engine.generate(no_chat_job("x2", [*held, 60, 61]))
    assert result.cached_tokens == len(held)
    assert model.evaluated[evaluated : evaluated + 2] == [60, 61]  # only the new tokens were read
    assert not any(s.chat_id == "x1" for s in engine.sequences) and sequence_of(engine, "x2").by_prefix
    assert model.copies == []


def test_a_chats_sequence_is_copied_for_a_job_of_no_chat_and_the_chat_keeps_it():
    model = EndlessModel()
    engine = Engine(model)
    history = list(range(1, 201))
    engine.generate(job("a", 1))
    engine.generate(Job("a", Prompt(history, [], 0), Options(1, 0, 1, 1), on_text=list().append))
    own = sequence_of(engine, "a")
    result = engine.generate(no_chat_job("x", [*history[:150], 7, 8]))
    copy = sequence_of(engine, "x")
    assert copy.id != own.id and model.copies == [(own.id, copy.id, 150)]
    assert result.cached_tokens == 150 and copy.tokens[:152] == [*history[:150], 7, 8]
    # The chat's next turn finds all of its own cache.
    assert own.chat_id == "a" and own.tokens == history
    follow_up = Job("a", Prompt([*history, 9], [], 0), Options(1, 0, 1, 1), on_text=list().append)
    assert engine.generate(follow_up).cached_tokens == len(history)


def test_a_short_prefix_in_common_is_read_again():
    """Under MIN_COPIED_PREFIX tokens a copy costs more than it saves; under MIN_SHARED_PREFIX (a template's
    opening) another conversation's cache is worth more than the least recently used sequence's."""
    model = EndlessModel()
    engine = Engine(model)
    engine.generate(Job("a", Prompt(list(range(1, 101)), [], 0), Options(1, 0, 1, 1), on_text=list().append))
    engine.generate(no_chat_job("x", [*range(1, 101), 5]))
    assert model.copies == [] and sequence_of(engine, "a").tokens[:100] == list(range(1, 101))
    engine.generate(no_chat_job("y", list(range(1, 40))))  # shares 39 tokens with x: takes x's sequence over
    assert not any(s.chat_id == "x" for s in engine.sequences)
    engine.generate(no_chat_job("z", [1, 2, 3, 4, 99]))  # 4 in common with y: a sequence of its own
    assert sequence_of(engine, "y").tokens[:39] == list(range(1, 40))


@pytest.fixture(scope="module")
def small_model() -> Model:
    """The real model with a small window (256 tokens), two sequences."""
    return Model(default_model_path(ROOT / "instance" / "models"), 256, 2, 2)


def run_beside(model: Model, good: Job, other: Job | None) -> dict[str, object]:
    """Run `good` and, once it generates, `other` beside it, until both end; their results by chat."""
    engine = Engine(model, step_tokens=64)
    results = {}
    new = [good]
    for _ in range(2):  # the good job reads its prompt and starts generating
        results.update((job.chat_id, result) for job, result in engine.step(new))
        new = []
    new = [other] if other else []
    while engine.slots or new:
        results.update((job.chat_id, result) for job, result in engine.step(new))
        new = []
    return results


@pytest.mark.parametrize("culprit", ["longer than the window", "a token not in the vocabulary"])
def test_tokens_the_model_cannot_read_end_their_job_alone(small_model, culprit):
    """llama.cpp refuses a batch that holds a job's tokens it cannot read (past the sequence's window, out of
    the vocabulary): that job ends with an error, the one beside it goes on to the very text it makes alone
    (it used to end with the culprit, as every running reply did)."""
    model = small_model
    question = "Tell me everything you know about the history of Rome, in detail."
    tokens = PromptBuilder(model).build("", [Message("Human", question)], 200).tokens
    texts: list[str] = []
    alone = run_beside(model, Job("good", Prompt(tokens, [], 0), Options(60, 0, 1, 1), texts.append), None)["good"]
    assert alone.finish_reason == "length"  # it runs to its max_tokens: it is still running when the culprit fails
    alone_text, texts = "".join(texts), []
    bad_tokens = tokens * 20 if culprit == "longer than the window" else [2, model.n_vocab + 5, 100]
    bad = Job("bad", Prompt(bad_tokens, [], 0), Options(10, 0, 1, 1), on_text=list().append)
    good = Job("good", Prompt(tokens, [], 0), Options(60, 0, 1, 1), texts.append)
    results = run_beside(model, good, bad)
    assert results["bad"].finish_reason == "error" and "llama_decode returned" in results["bad"].error
    assert results["good"].finish_reason == "length" and results["good"].error is None
    assert "".join(texts) == alone_text

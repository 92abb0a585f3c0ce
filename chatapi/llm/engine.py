"""The model's owner: one real OS thread runs every generation, several at once (continuous batching, chunked
prefill), each chat on a KV-cache sequence of its own. How, and what it buys: docs/benchmarks.md, "The engine".
"""

import codecs
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .kv_files import MIN_RESTORED, Saved, common_prefix
from .model import BATCH_SIZE, Model
from .prompt import Prompt
from .stops import StopScanner

# Fewer tokens in common than this are read again rather than copied from a chat's sequence: a copy moves the
# whole sequence's cache (tens of MB), which costs about what reading this many tokens does.
MIN_COPIED_PREFIX = 128
# A job of no chat takes over another's sequence for at least this many tokens in common; fewer (a template's
# opening) are not worth evicting that conversation's cache rather than the least recently used one.
MIN_SHARED_PREFIX = 16
log = logging.getLogger(__name__)


@dataclass
class Options:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    grammar: str | None = None  # GBNF (chatapi/llm/grammar.py): the reply is sampled under it, from its first rule


@dataclass
class Job:
    """One generation as the engine sees it."""

    chat_id: uuid.UUID
    prompt: Prompt | None  # set once the prompt is built; None again once the engine has read it (Slot.prompt_tokens)
    options: Options
    on_text: Callable[[str], None]  # called from the engine thread
    cancelled: bool = False  # set from the server side; read between tokens
    # Only read the prompt into the chat's cache, to be there when the chat's next job comes (internet mode
    # reads a chat's history while it searches the web). Such a job ends unreported, and gives way: to the
    # chat's own next job, and to any job that needs a sequence when none is free.
    read_only: bool = False
    # A job of no chat (its chat_id is its own, never seen again): its cache is found by its prompt's tokens.
    by_prefix: bool = False
    # The chat's state as saved on disk (kv_files.py), read for this job when the chat had no sequence in memory.
    restore: Saved | None = None


@dataclass
class Result:
    finish_reason: str  # stop, length, cancelled, or error (see `error`)
    prompt_tokens: int | None  # None: unknown (a remote server that reports no usage)
    completion_tokens: int | None
    cached_tokens: int | None
    started: float  # monotonic times
    first_token: float | None
    ended: float
    usage_note: str | None = None  # why the counts are unknown
    error: str | None = None  # finish_reason "error": why llama.cpp could not go on with the job's tokens


@dataclass
class Sequence:
    """A KV-cache sequence and the tokens it holds."""

    id: int
    chat_id: uuid.UUID | None = None
    tokens: list[int] = field(default_factory=list)
    used: float = 0.0
    by_prefix: bool = False  # held for a job of no chat: nobody comes back for it by its chat id
    job: "Job | None" = None  # the last job admitted on it: a save is of the state that job left


@dataclass
class Part:
    """One slot's entries in a step's batch."""

    slot: "Slot"
    entries: list[tuple[int, int, int, bool]]  # (token, position, sequence, wants logits)
    sampled: bool  # whether the slot samples a token from its last entry's logits
    start: int  # the sequence's length before these entries: where a decode that failed leaves it


@dataclass
class Slot:
    """A running job: its sequence, its own sampler, decoder and stop scanner, and how far it has got."""

    job: Job
    sequence: Sequence
    sampler: object
    decoder: codecs.IncrementalDecoder
    scanner: StopScanner | None  # None once a stop string matched: nothing held back belongs to the reply
    started: float
    cached: int  # prompt tokens found in the sequence already
    read: int  # prompt tokens in the sequence so far (the rest are read in chunks)
    prompt_tokens: int  # the prompt's length (the job lets go of the prompt once it is read)
    pending: int | None = None  # the last sampled token, evaluated at the next step
    produced: int = 0
    first_token: float | None = None


class Engine:
    """Runs generations on a loaded Model. Call only from the model's own thread."""

    def __init__(self, model: Model, step_tokens: int = 256):
        self.model = model
        self.step_tokens = step_tokens  # tokens decoded in one step at most (one per running reply first)
        self.sequences = [Sequence(id=i) for i in range(model.sequences)]
        self.slots: list[Slot] = []
        # Chats whose state is to be saved (see `save`): the tokens their next prompt begins with, and the job whose
        # end that is (an order that comes after the chat's next job was admitted is of no use)...
        self.unsaved: dict[uuid.UUID, tuple[list[int], Job]] = {}
        # ...and the states copied out since the caller last took them (`take_saved`): (chat, tokens, state).
        self.saved: list[tuple[uuid.UUID, list[int], object]] = []
        # Sequences copied from in this step: llama.cpp copies their data at the next decode, so none may have a
        # state restored into it before then (the copy would carry that state).
        self.copied_from: set[int] = set()

    def sequence_for(self, chat_id: uuid.UUID, prompt: list[int] | None = None) -> Sequence:
        """The chat's own sequence, else one that no running job holds: for a job of no chat (`prompt` given)
        the one that begins with most of its prompt (see by_prefix), else the least recently used of those
        that keep the running sequences' ids closest together.

        llama.cpp computes a step over every sequence from the lowest id in the batch to the highest: four
        replies on sequences 0, 1, 4 and 5 took 48 ms a step against 31 on 2 to 5."""
        sequence = next((s for s in self.sequences if s.chat_id == chat_id), None)
        if sequence is None:
            reading_ahead = [slot for slot in self.slots if slot.job.read_only]
            if len(self.slots) == len(self.sequences) and reading_ahead:
                self.slots.remove(reading_ahead[0])
            running = [slot.sequence.id for slot in self.slots]

            def span_with(candidate: Sequence) -> int:
                ids = [*running, candidate.id]
                return max(ids) - min(ids)

            free = [s for s in self.sequences if s.id not in running]
            spare = [s for s in free if s.id not in self.copied_from] or free
            least_used = min(spare, key=lambda s: (span_with(s), s.used))
            if least_used.chat_id in self.unsaved:  # its chat's state is saved before another's overwrites it
                self._copy_state(least_used.chat_id)
            sequence = self.by_prefix(prompt, free, least_used) if prompt else least_used
            sequence.chat_id = chat_id
            sequence.by_prefix = prompt is not None
        sequence.used = time.monotonic()
        return sequence

    def by_prefix(self, prompt: list[int], free: list[Sequence], least_used: Sequence) -> Sequence:
        """Of the free sequences, the one whose tokens begin the prompt furthest: taken over when it was a job
        of no chat's (its owner never comes back); a chat's is copied into `least_used` instead, so that the
        chat's next turn still finds it. Without a long enough prefix in common, `least_used`."""
        best = max(free, key=lambda s: (common_prefix(s.tokens, prompt), s.by_prefix))
        common = common_prefix(best.tokens, prompt)
        if best is least_used or common < MIN_SHARED_PREFIX:
            return least_used
        if best.by_prefix:
            return best
        if common < MIN_COPIED_PREFIX or not self._window_kept(best, common):
            return least_used
        self.model.copy(best.id, least_used.id, common)
        self.copied_from.add(best.id)
        least_used.tokens = best.tokens[:common]
        return least_used

    def generate(self, job: Job) -> Result:
        """One job from start to end (the engine's other jobs, if any, go on beside it)."""
        new = [job]
        while True:
            for done, result in self.step(new):
                if done is job:
                    return result
            new = []

    def step(self, new_jobs: list[Job]) -> list[tuple[Job, Result]]:
        """Admit new jobs, then decode one batch and sample a token for each job it ends on; returns the
        jobs that ended (cancelled, stopped, at their length, or with an error: llama.cpp refused their tokens)
        with their results. Anything else that fails drops every job (the backend reports them failed)."""
        try:
            return self._step(new_jobs)
        except Exception:
            self._forget_all()
            raise

    def _step(self, new_jobs: list[Job]) -> list[tuple[Job, Result]]:
        refused = []
        for job in new_jobs:
            if job.read_only and not self._may_read_ahead(job):
                continue
            options = job.options
            try:
                sampler = self.model.sampler(options.temperature, options.top_p, options.seed, options.grammar)
            except ValueError as exc:  # a grammar llama.cpp cannot parse (the API checks before it queues a reply)
                now = time.monotonic()
                refused.append((job, Result("error", len(job.prompt.tokens), 0, 0, now, None, now, error=str(exc))))
                continue
            # A chat's job takes over from the reading ahead of its prompt: what was read so far is its cache.
            self._stop_reading_ahead(lambda slot, chat_id=job.chat_id: slot.job.chat_id == chat_id)
            self.slots.append(self._admit(job, sampler))
        self._stop_reading_ahead(lambda slot: slot.job.cancelled)
        ended = refused + [self._end(slot, "cancelled") for slot in list(self.slots) if slot.job.cancelled]
        parts = self._fill_batch()
        self._stop_reading_ahead(lambda slot: slot.read == slot.prompt_tokens)  # all read: done
        if not parts:
            return ended
        try:
            self.model.decode([entry for part in parts for entry in part.entries])
        except Exception:  # llama.cpp refused the batch: the tokens of some job (or jobs) in it
            return ended + self._decode_apart(parts)
        finally:
            self.copied_from.clear()  # done at that decode, whether or not it was refused
        index = -1
        for part in parts:
            index += len(part.entries)
            if part.sampled:
                ended += self._sample(part.slot, index)
        return ended

    def _sample(self, slot: Slot, index: int) -> list[tuple[Job, Result]]:
        """Take the slot's next token from the last decode's entry `index`; its job's end if it ends with it."""
        # Its prompt is all in its sequence now: a reply need not hold the tokens (up to the whole window).
        slot.job.prompt = None
        reason = self._take(slot, self.model.sample(slot.sampler, index))
        return [self._end(slot, reason)] if reason else []

    def _decode_apart(self, parts: list[Part]) -> list[tuple[Job, Result]]:
        """After a batch llama.cpp refused: each slot's part of it decoded alone, so that only the jobs whose
        tokens it refuses again end, with an error, and the others go on as if the batch had been decoded."""
        ended = []
        for part in parts:
            slot, sequence = part.slot, part.slot.sequence
            self.model.forget(sequence.id, part.start)  # whatever the refused batch left of these entries
            try:
                self.model.decode(part.entries)
            except Exception as exc:
                log.warning("the model could not read a job's %d tokens at %d: %s", len(part.entries), part.start, exc)
                self.model.forget(sequence.id, part.start)
                sequence.tokens = sequence.tokens[: part.start]
                if slot.job.read_only:  # reading ahead ends unreported: the chat's job will meet this itself
                    self._stop_reading_ahead(lambda other, slot=slot: other is slot)
                else:
                    ended.append(self._end(slot, "error", f"the model could not read the reply's tokens: {exc}"))
                continue
            if part.sampled:
                ended += self._sample(slot, len(part.entries) - 1)
        return ended

    def _may_read_ahead(self, job: Job) -> bool:
        """Reading ahead never takes a sequence from a job (the chat has its own, or one is held by no slot), nor
        comes after its chat's own job (a file read late: it would cut that job's cache)."""
        if job.cancelled or any(slot.job.chat_id == job.chat_id for slot in self.slots):
            return False
        own = any(s.chat_id == job.chat_id for s in self.sequences)
        return own or len(self.slots) < len(self.sequences)

    def _stop_reading_ahead(self, which: Callable[[Slot], bool]) -> None:
        """Drop the read-only slots `which` picks, unreported; what they read stays in their sequence."""
        self.slots = [slot for slot in self.slots if not (slot.job.read_only and which(slot))]

    def _admit(self, job: Job, sampler) -> Slot:
        prompt = job.prompt.tokens
        self.unsaved.pop(job.chat_id, None)  # this job's end saves the chat's state anew
        sequence = self.sequence_for(job.chat_id, prompt if job.by_prefix else None)
        sequence.job = job
        if job.restore is not None:
            self._restore(sequence, job.restore, prompt)
            job.restore = None  # tens of MB: not kept while the job runs
        # Reuse what the sequence already holds; at least one token must run to get logits (unless only read).
        cached = min(common_prefix(sequence.tokens, prompt), len(prompt) - (not job.read_only))
        if not self._window_kept(sequence, cached):
            cached = 0
        self.model.forget(sequence.id, cached)
        sequence.tokens = sequence.tokens[:cached]
        return Slot(
            job=job,
            sequence=sequence,
            sampler=sampler,
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
            # Under a grammar the reply ends with it (an end-of-generation token, once complete) or at max_tokens: a
            # stop string could match inside its JSON and cut it.
            scanner=StopScanner([] if job.options.grammar else job.prompt.stop),
            started=time.monotonic(),
            cached=cached,
            read=cached,
            prompt_tokens=len(prompt),
        )

    def _window_kept(self, sequence: Sequence, length: int) -> bool:
        """Whether the sequence's first `length` tokens can be used as read: of a sliding-window model, whether
        its cache still holds the whole window before token `length`. A state restored from disk holds only the window
        before its last token (llama.cpp writes no more), so only the whole of it can be used, by its chat's next
        prompt; another chat (or an edit) that shares less of it must read its prompt cold."""
        return self.model.first_position(sequence.id) <= max(0, length - self.model.n_swa)

    def _restore(self, sequence: Sequence, saved: Saved, prompt: list[int]) -> None:
        """Load a chat's saved state into its sequence, unless the sequence holds as much of the prompt already
        (llama.cpp refuses a state that is not this model's: the sequence is then empty)."""
        if common_prefix(sequence.tokens, prompt) >= saved.usable or sequence.id in self.copied_from:
            return
        restored = self.model.restore_state(sequence.id, saved.state)
        sequence.tokens = saved.tokens if restored else []
        if not restored:
            log.warning("llama.cpp refused the saved state of chat %s: its prompt is read cold", saved.chat_id)

    def save(self, chat_id: uuid.UUID, prefix: list[int], job: Job) -> None:
        """Save the chat's state as `job` left it, up to what it has in common with `prefix` (the tokens its next
        prompt begins with), when `save_next` is called (the model's thread does while no reply runs), or before its
        sequence goes to another chat: the copy (milliseconds for the bundled model, more for a larger one) never
        delays running replies' steps but to keep a state that would otherwise be lost. The states copied out wait in
        `saved`."""
        self.unsaved[chat_id] = (prefix, job)

    def save_next(self) -> None:
        """Copy out one state that waits (one at a time: a job that comes meanwhile waits for one copy at most)."""
        if self.unsaved:
            self._copy_state(next(iter(self.unsaved)))

    def take_saved(self) -> list[tuple[uuid.UUID, list[int], object]]:
        saved, self.saved = self.saved, []
        return saved

    def _copy_state(self, chat_id: uuid.UUID) -> None:
        """Cut the chat's sequence to its next prompt's prefix and copy its state out, unless its sequence left
        memory, its next job runs already (whose end saves it anew), or too little is in common to be worth restoring.

        Cut first, because llama.cpp writes a sliding-window model's state as the window before the sequence's last
        token only: a state is of use as a whole, so it must end where the next prompt goes on from it."""
        prefix, job = self.unsaved.pop(chat_id)
        sequence = next((s for s in self.sequences if s.chat_id == chat_id and not s.by_prefix), None)
        if sequence is None or sequence.job is not job or any(slot.sequence is sequence for slot in self.slots):
            return
        keep = common_prefix(sequence.tokens, prefix)
        if keep < MIN_RESTORED:
            return
        self.model.forget(sequence.id, keep)
        sequence.tokens = sequence.tokens[:keep]
        try:
            self.saved.append((chat_id, list(sequence.tokens), self.model.save_state(sequence.id)))
        except Exception:  # the chat is read cold next time
            log.exception("the state of chat %s could not be copied", chat_id)

    def _fill_batch(self) -> list[Part]:
        """The step's batch, in parts of one slot each: every generating slot's last token first, by sequence id
        (llama.cpp splits a batch whose sequences are out of order: 4 replies on sequences 4, 5, 3, 2 took 50 ms
        a step against 31 in order), then prompt chunks in arrival order (see _prompt_room)."""
        parts: list[Part] = []
        size = 0
        for slot in sorted(self.slots, key=lambda slot: slot.sequence.id):
            if slot.pending is not None:
                sequence = slot.sequence
                entry = (slot.pending, len(sequence.tokens), sequence.id, True)
                parts.append(Part(slot, [entry], sampled=True, start=len(sequence.tokens)))
                sequence.tokens.append(slot.pending)
                slot.pending = None
                size += 1
        for slot in self.slots:
            room = self._prompt_room(slot, size)
            if slot.read == slot.prompt_tokens or room <= 0:
                continue
            chunk = slot.job.prompt.tokens[slot.read : slot.read + room]
            last = slot.read + len(chunk) == slot.prompt_tokens
            wants_logits = last and not slot.job.read_only
            entries = [
                (token, slot.read + offset, slot.sequence.id, wants_logits and offset == len(chunk) - 1)
                for offset, token in enumerate(chunk)
            ]
            parts.append(Part(slot, entries, sampled=wants_logits, start=len(slot.sequence.tokens)))
            slot.read += len(chunk)
            slot.sequence.tokens.extend(chunk)
            size += len(chunk)
        return parts

    def _prompt_room(self, slot: Slot, size: int) -> int:
        """How many of the slot's prompt tokens this step may read, `size` tokens being in the batch already: the
        room left of step_tokens, so that a long prompt stalls the running replies one chunk at a time; but a prompt
        no longer than step_tokens is read in one piece, as far as one llama.cpp batch holds it. Replies asked
        together then start together, as on llama-server: of 4 ~80-token prompts asked at once, the last got its
        first token after 385 ms when split over two steps, 357 in one, llama-server's 348 (docs/benchmarks.md,
        "The engine")."""
        room = self.step_tokens - size
        if slot.prompt_tokens - slot.cached <= self.step_tokens:
            room = max(room, BATCH_SIZE - size)
        return room

    def _take(self, slot: Slot, token: int) -> str | None:
        """Stream a sampled token's text; the finish reason if the job ends with it."""
        model, job = self.model, slot.job
        slot.produced += 1
        if model.is_end(token):
            return "stop"
        text, stop_string = slot.scanner.feed(slot.decoder.decode(model.piece(token)))
        self._emit(slot, text)
        if stop_string:
            slot.scanner = None  # nothing held back is part of the reply
            return "stop"
        if slot.produced >= job.options.max_tokens or len(slot.sequence.tokens) >= model.n_ctx:
            return "length"
        slot.pending = token
        return None

    def _emit(self, slot: Slot, text: str) -> None:
        if text:
            slot.first_token = slot.first_token or time.monotonic()
            slot.job.on_text(text)

    def _end(self, slot: Slot, finish_reason: str, error: str | None = None) -> tuple[Job, Result]:
        self.slots.remove(slot)
        if slot.scanner is not None and error is None:  # text held back as a possible stop string is the reply's
            self._emit(slot, slot.scanner.flush() + slot.decoder.decode(b"", final=True))
        result = Result(
            finish_reason=finish_reason,
            prompt_tokens=slot.prompt_tokens,
            completion_tokens=slot.produced,
            cached_tokens=slot.cached,
            started=slot.started,
            first_token=slot.first_token,
            ended=time.monotonic(),
            error=error,
        )
        return slot.job, result

    def _forget_all(self) -> None:
        """After an unexpected failure every running sequence's cells are in an unknown state."""
        for slot in self.slots:
            self.model.forget(slot.sequence.id, 0)
            slot.sequence.tokens = []
        self.slots = []

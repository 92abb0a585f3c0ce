"""One Assistant reply: what it answers and how (ReplyRequest, what the service takes to start it), and the log of
its events (Reply), replayed to whoever listens, resumable.

Everything here runs in greenlets of the server's hub; the queue hands a reply the text the engine thread made
(chatapi/llm/queue.py). With Redis (chatapi/llm/redis_replies.py) the same events are also written to a stream
that other processes read.
"""

import dataclasses
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent.event import Event

from .engine import Job, Options, Result
from .prompt import Message, Prompt
from .sse import PING, event_text


@dataclass(frozen=True)
class Researched:
    """What internet mode's research gives the reply: text for its prompt, and how long each phase took."""

    prompt: str  # the sources, numbered, to join to the prompt; "" when there are none
    timings: dict  # each phase's time as `<phase>_ms` (search_ms, fetch_ms, rank_ms), added to `done`'s timings


# The hooks through which the app takes part in a reply (chatapi/replies.py gives them):
# Stores a finished reply (reply.text); returns the saved message, or None when the reply has no text. Raises ChatGone
# when the chat was deleted meanwhile, StoreUnavailable when it cannot be saved for now.
SaveReply = Callable[["Reply"], dict | None]
# Told of each event a reply publishes: (reply, event name or None for a text piece, data).
ReplyEvents = Callable[["Reply", str | None, dict], None]
# Internet mode's step between announcing a reply and queueing it: (reply, room in tokens) -> Researched. It may
# publish events of its own on the reply (search, warning, sources).
Research = Callable[["Reply", int], Researched]


class ChatGone(Exception):
    """The chat was deleted while its reply was being made."""


class StoreUnavailable(Exception):
    """The reply could not be saved because its store (the database) cannot be reached for now."""


@dataclass(frozen=True)
class ReplyRequest:
    """What a reply answers and how: all the queue needs to start one (llama.cpp's `server_task`)."""

    chat_id: uuid.UUID  # the chat it belongs to; a reply of no chat (/v1's) has an id of its own, never seen again
    mode: str  # "local", "internet" or "openai": told in the `start` event, and the metrics' label
    history: tuple[Message, ...]  # the conversation it answers, oldest first
    system_prompt: str
    options: Options  # max_tokens, temperature, top_p, seed
    save: SaveReply  # stores it once finished
    answering: uuid.UUID | None = None  # the id of the message it answers
    replacing: uuid.UUID | None = None  # regenerate: the id of the message it is saved in place of
    stops: tuple[str, ...] = ()  # the client's stop strings, besides the template's
    on_event: ReplyEvents | None = None  # told of each of its events (the app's metrics)
    research: Research | None = None  # internet mode: runs after the `start` event, gives text for the prompt
    # A chat's reply, kept for reconnects once finished and shared through Redis; not /v1's, which nobody can come
    # back for: forgotten once it ends.
    resumable: bool = True
    # Whether the history may be cut to fit the window; without (/v1: the messages whole or an error the client can
    # act on), ContextLengthExceeded when what the prompt must keep does not fit.
    cut: bool = True
    by_prefix: bool = False  # a reply of no chat: the engine finds its cache by the prompt's tokens, not the chat
    model: str | None = None  # the id of the model that writes it; None: the server's default
    # /v1's function tools (OpenAI's {"type": "function", "function": {...}}) the prompt offers the model.
    tools: tuple[dict, ...] = ()
    # /v1's parameters a remote model server is sent as the client gave them (tools, tool_choice, response_format),
    # in place of the grammar and the prompt's tools the local backend uses.
    upstream: dict | None = None
    # /v1/completions: the prompt as the client wrote it, read as is (no chat template, no system prompt; the
    # history is empty), whole or ContextLengthExceeded.
    raw_prompt: str | None = None


class Resumable:
    """What a request needs to join or resume a reply, whether it is made in this process (Reply) or another
    (redis_replies.SharedReply): its ids, whether it is over, how many events it has, and `listen`."""

    message_id: uuid.UUID
    answering: uuid.UUID | None  # the id of the message the reply answers
    replacing: uuid.UUID | None  # regenerate: the id of the message the saved reply takes the place of
    finished: bool

    @property
    def event_count(self) -> int:
        raise NotImplementedError

    def listen(self, after: int = -1):
        raise NotImplementedError

    def index_of(self, event_id: str) -> int | None:
        """The position of an event id of this reply, else None."""
        message_id, _, index = event_id.rpartition(".")
        # ASCII digits, and not too many for int(): str.isdigit() also takes "²", which int() refuses.
        if message_id != str(self.message_id) or not re.fullmatch(r"[0-9]{1,9}", index):
            return None
        return int(index)

    def resumable_after(self, event_id: str | None) -> int | None:
        """Where a listener that saw `event_id` picks up: -1 (from the start) when it names nothing
        of a running reply, the index after which events remain, or None when nothing is left."""
        seen = self.index_of(event_id) if event_id is not None else None
        if not self.finished:
            return -1 if seen is None else seen
        if seen is not None and seen < self.event_count - 1:
            return seen  # the rest of a finished reply
        return None


# What a finished reply holds besides its events (the objects it is made of, its ids, the `done` event's data),
# measured with tracemalloc; a few KB, counted so that many short replies are bounded too.
REPLY_BYTES = 4096


class Reply(Resumable):
    """One Assistant reply being made. `on_unheard` runs when nobody has listened for `grace_seconds`;
    `on_event`, if given, is told of every event published (the app counts them for its metrics)."""

    def __init__(
        self,
        request: ReplyRequest,
        ping_seconds: float,
        grace_seconds: float,
        on_unheard: Callable[["Reply"], None],
    ):
        # What it keeps of its request: not the history, the prompt's parts or the hooks that store it, which a
        # finished reply kept for reconnects must not hold.
        self.chat_id = request.chat_id
        self.mode = request.mode
        self.answering = request.answering
        self.replacing = request.replacing
        self.resumable = request.resumable
        self.on_event = request.on_event
        self.model = request.model  # the model's id (the service sets the default's for None)
        self.upstream = request.upstream or {}  # a remote model server's extra parameters (ReplyRequest.upstream)
        self.message_id = uuid.uuid4()  # the id the saved reply will have
        self.ping_seconds = ping_seconds
        self.grace_seconds = grace_seconds
        self.on_unheard = on_unheard
        # The engine's view of the reply; its `cancelled` is the one stop flag, read between tokens.
        self.job = Job(request.chat_id, None, request.options, on_text=self.add_text, by_prefix=request.by_prefix)
        self.events: list[str] = []  # as sent on the chat API's stream
        # The same events as (name, data), for /v1's stream and Redis; None once the finished reply is kept for
        # the chat API's reconnects only (keep_for_reconnects).
        self.records: list[tuple[str | None, dict]] | None = []
        self.visible = 0  # the events listeners may see (finish holds back the last while it is shared)
        self.pieces: list[str] = []
        self.listeners = 0
        self.departures = 0  # times the last listener left: a grace timer only acts on the latest one
        self.finished = False
        self._changed = Event()
        self.created = time.monotonic()
        self.prepared: float | None = None  # when its prompt was built (the `start` event)
        self.dequeued: float | None = None
        self.reading_ahead: Job | None = None  # internet mode: the history read while the web is searched
        # With Redis: told of each event, to write it to the reply's stream (redis_replies.Publication.wake)...
        self.on_publish: Callable[[], None] | None = None
        self.on_finish: Callable[[], None] | None = None  # ...and told of the last, to write it at once
        # ...and asked, when nobody here listens, for how many seconds more a listener elsewhere counts as there.
        self.heard_elsewhere: Callable[[], float] | None = None

    @property
    def event_count(self) -> int:
        return len(self.events)

    @property
    def cancelled(self) -> bool:
        return self.job.cancelled

    @property
    def text(self) -> str:
        """The reply as saved: the streamed pieces joined, surrounding white space stripped."""
        return "".join(self.pieces).strip()

    def begin(self, prompt: Prompt) -> None:
        """The prompt is ready: announce the reply."""
        self.job.prompt = prompt
        self.prepared = time.monotonic()
        start = {"chat_id": str(self.chat_id), "message_id": str(self.message_id), "mode": self.mode}
        self.publish("start", {**start, "model": self.model, "truncated": prompt.truncated})

    # Producing events (hub thread only)

    def publish(self, event: str | None, data: dict, announce: bool = True) -> None:
        self.events.append(event_text(f"{self.message_id}.{len(self.events)}", data, event))
        self.records.append((event, data))
        if self.on_event:
            self.on_event(self, event, data)
        if self.on_publish:
            self.on_publish()
        if announce:
            self._announce()

    def _announce(self) -> None:
        """Let the listeners here see every event published so far."""
        self.visible = len(self.events)
        changed, self._changed = self._changed, Event()
        changed.set()

    def add_text(self, text: str) -> None:
        self.pieces.append(text)
        self.publish(None, {"content": text})

    def finish(self, event: str, data: dict) -> None:
        self.publish(event, data, announce=False)
        if self.on_finish:
            # With Redis the end is there, and the chat let go, before a listener here hears of it: a client that
            # asks another process for its next reply at once must not find this one still going.
            self.on_finish()
        self.finished = True
        self._announce()

    # Once finished

    def let_go(self) -> None:
        """Once finished: drop what only making the reply needed, its prompt. The reply keeps a copy of its job
        without the prompt: a backend that still holds the job itself (the local one lets go of a prompt once it has
        read it, but a job queued behind a failed step is still in its queue) keeps what it needs."""
        self.job = dataclasses.replace(self.job, prompt=None)
        self.reading_ahead = None

    def keep_for_reconnects(self) -> int:
        """Keep a finished reply for the chat API's reconnects only: its SSE events, which hold its text too (Redis
        has its records by now, or its publication holds them until it has). Returns the bytes it holds."""
        self.records = None
        self.pieces = []
        return REPLY_BYTES + sum(sys.getsizeof(event) + 8 for event in self.events)  # each string and its pointer

    # Listening

    def listen(self, after: int = -1, records: bool = False):
        """The events after index `after`, then each new one as it comes, with pings between: as SSE text,
        or with `records` as (name, data) pairs and None for a ping."""
        self.listeners += 1
        events, ping = (self.records, None) if records else (self.events, PING)
        try:
            sent = after + 1
            while True:
                changed = self._changed
                while sent < self.visible:
                    yield events[sent]
                    sent += 1
                if self.finished:
                    return
                if not changed.wait(timeout=self.ping_seconds):
                    yield ping
        finally:
            self.listeners -= 1
            if self.listeners == 0:
                self.departures += 1
                self.watch_listeners()

    def watch_listeners(self) -> None:
        """Cancel the reply if nobody listens to it for a whole grace period from now."""
        if self.listeners == 0 and not self.finished:
            gevent.spawn_later(self.grace_seconds, self._cancel_if_unheard, self.departures)

    def _cancel_if_unheard(self, departures: int) -> None:
        # A listener that came and went meanwhile started a grace period of its own.
        if self.listeners != 0 or self.departures != departures or self.finished:
            return
        # One listening through another process (Redis) keeps it going: look again when its word runs out.
        remaining = self.heard_elsewhere() if self.heard_elsewhere else 0
        if remaining > 0:
            gevent.spawn_later(remaining, self._cancel_if_unheard, departures)
        else:
            self.on_unheard(self)


# How a backend reports to the service, in the event loop: a reply it ended (its result), or one it could not make
# (the error event's code and message).
OnEnd = Callable[[Reply, Result], None]
OnFailure = Callable[[Reply, int, str], None]

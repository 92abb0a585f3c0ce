"""Generations of Assistant replies: queued, shared by their listeners, resumable, saved at the end.

Everything here runs in greenlets of the server's hub; the engine thread only reports text
through `Hub.loop.run_callback_threadsafe` (a gevent queue filled from a thread would not wake
the hub, and tokens would arrive late).
"""

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict

import gevent
from flask import Flask
from gevent.event import Event
from gevent.threadpool import ThreadPool

from ..extensions import db
from ..models import Chat, Conversation
from ..schemas import ConversationSchema
from .engine import Engine, Job, Options, Result
from .model import Model, default_model_path
from .prompt import Message, Prompt, PromptBuilder
from .sse import PING, ServerSentEvent

FINISHED_KEPT = 1000  # finished generations remembered for reconnects
SOURCES_ROOM = 1536  # tokens kept free for web sources in internet mode (at most half the budget)
SOURCES_MARGIN = 48  # tokens for the lines that join the sources to the system prompt

# Internet mode's step between announcing a reply and queueing it: (generation, room) -> prompt text.
Research = Callable[["Generation", int], str]


class QueueFull(Exception):
    pass


class Generation:
    """One Assistant reply being made: its events so far, replayed to whoever listens."""

    def __init__(
        self,
        service: "ReplyService",
        app: Flask,
        chat_id: str,
        mode: str,
        options: Options,
        answering: uuid.UUID | None,
    ):
        self.service = service
        self.answering = answering  # the id of the message this reply answers
        self.app = app
        self.chat_id = chat_id
        self.mode = mode
        self.options = options
        self.message_id = str(uuid.uuid4())
        self.events: list[ServerSentEvent] = []
        self.pieces: list[str] = []
        self.listeners = 0
        self.finished = False
        self.cancelled = False
        self.job: Job | None = None  # made once the prompt is built
        self.hub = gevent.get_hub()
        self._changed = Event()
        self.created = time.monotonic()
        self.dequeued: float | None = None
        self.sources: list[dict] | None = None  # internet mode: the pages the prompt cites
        self.research_timings: dict = {}

    def begin(self, prompt: Prompt) -> None:
        """The prompt is ready: make the engine's job and announce the reply."""
        self.job = Job(self.chat_id, prompt, self.options, on_text=self._text_from_engine, cancelled=self.cancelled)
        start = {
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "mode": self.mode,
            "truncated": prompt.truncated,
        }
        self.publish("start", start)

    # Producing events (hub thread only)

    def publish(self, event: str | None, data: dict) -> None:
        self.events.append(ServerSentEvent(f"{self.message_id}.{len(self.events)}", data, event))
        changed, self._changed = self._changed, Event()
        changed.set()

    def _text_from_engine(self, text: str) -> None:
        self.hub.loop.run_callback_threadsafe(self._add_text, text)

    def _add_text(self, text: str) -> None:
        self.pieces.append(text)
        self.publish(None, {"content": text})

    def finish(self, event: str, data: dict) -> None:
        self.publish(event, data)
        self.finished = True

    def cancel(self) -> None:
        self.cancelled = True
        if self.job:
            self.job.cancelled = True
        self.service.withdraw(self)

    # Listening

    def listen(self, after: int = -1):
        """The events after index `after`, then each new one as it comes, with pings between."""
        self.listeners += 1
        try:
            sent = after + 1
            while True:
                changed = self._changed
                while sent < len(self.events):
                    yield self.events[sent].text
                    sent += 1
                if self.finished:
                    return
                if not changed.wait(timeout=self.service.ping_seconds):
                    yield PING
        finally:
            self.listeners -= 1
            if self.listeners == 0 and not self.finished:
                gevent.spawn_later(self.service.grace_seconds, self._cancel_if_unheard)

    def _cancel_if_unheard(self) -> None:
        if self.listeners == 0 and not self.finished:
            self.cancel()

    def index_of(self, event_id: str) -> int | None:
        """The position of an event id of this generation, else None."""
        message_id, _, index = event_id.rpartition(".")
        if message_id != self.message_id or not index.isdigit():
            return None
        return int(index)

    # Ending

    def save(self, result: Result) -> None:
        """Store the reply (the streamed pieces joined) and send `done` with it."""
        text = "".join(self.pieces).strip()
        with self.app.app_context():
            try:
                chat = db.session.get(Chat, uuid.UUID(self.chat_id))
                if chat is None:
                    return self.finish("error", {"code": 404, "message": f"chat {self.chat_id} was deleted"})
                saved = None
                if text:
                    conversation = Conversation(
                        chat=chat, role="Assistant", message=text, id=uuid.UUID(self.message_id), sources=self.sources
                    )
                    db.session.add(conversation)
                    db.session.commit()
                    saved = ConversationSchema().dump(conversation)
            except Exception as exc:  # the stream must still end with an event
                db.session.rollback()
                self.app.logger.exception("saving reply failed")
                return self.finish("error", {"code": 500, "message": f"the reply could not be saved: {exc}"})
            finally:
                db.session.remove()
        self.finish(
            "done",
            {
                "message": saved,
                "finish_reason": result.finish_reason,
                "usage": self.usage(result),
                "timings": self.timings(result),
            },
        )

    @staticmethod
    def usage(result: Result) -> dict:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cached_tokens": result.cached_tokens,
        }

    def timings(self, result: Result) -> dict:
        generating = result.ended - (result.first_token or result.ended)
        return {
            "queue_ms": round(((self.dequeued or result.started) - self.created) * 1000, 1),
            "ttft_ms": round(((result.first_token or result.ended) - self.created) * 1000, 1),
            "total_ms": round((result.ended - self.created) * 1000, 1),
            "tokens_per_second": round((result.completion_tokens - 1) / generating, 1) if generating > 0 else None,
            **self.research_timings,
        }


class ReplyService:
    """The process's model, its queue, and the generations of every chat."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.queue_size = settings["CHATAPI_QUEUE_SIZE"]
        self.ping_seconds = settings["CHATAPI_PING_SECONDS"]
        self.grace_seconds = settings["CHATAPI_GRACE_SECONDS"]
        self.pool = ThreadPool(1)  # the one real OS thread that owns the model
        self.status = "not loaded"
        self.error: str | None = None
        self.model: Model | None = None
        self.prompts: PromptBuilder | None = None
        self.engine: Engine | None = None
        self.waiting: deque[Generation] = deque()
        self.running: Generation | None = None
        self.preparing = 0  # generations whose prompt is being built
        self.by_chat: OrderedDict[str, Generation] = OrderedDict()
        self._work = Event()
        gevent.spawn(self._dispatch)

    def load(self) -> None:
        """Start loading the model in its thread, once. The server calls this as its worker starts
        (gunicorn.conf.py); elsewhere the first request that needs the model does (not `flask db upgrade`)."""
        if self.status == "not loaded":
            self.status = "loading"
            self.pool.spawn(self._load)

    def _load(self) -> None:
        """Runs in the model's thread; plain attribute writes, so no hub is needed to see the result."""
        s = self.settings
        try:
            path = s["CHATAPI_MODEL_PATH"] or default_model_path(s["model_cache"])
            self.model = Model(path, s["CHATAPI_N_CTX"], s["CHATAPI_N_THREADS"], s["CHATAPI_KV_CHATS"])
            self.prompts = PromptBuilder(self.model)
            self.engine = Engine(self.model)
            self.status = "ok"
        except Exception as exc:
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"

    def describe(self) -> dict:
        self.load()
        described = {"status": self.status}
        if self.model:
            described.update(name=self.model.name, n_ctx=self.model.n_ctx, path=self.model.path)
        if self.error:
            described["reason"] = self.error
        described["replies"] = {"running": int(self.running is not None), "waiting": self.preparing + len(self.waiting)}
        return described

    # Starting and joining

    def current(self, chat_id: str) -> Generation | None:
        return self.by_chat.get(chat_id)

    def start(
        self,
        app: Flask,
        chat_id: str,
        mode: str,
        history: list[Message],
        system_prompt: str,
        options: Options,
        research: Research | None = None,
        answering: uuid.UUID | None = None,
    ) -> Generation:
        """Queue the chat's next reply, or return the one another request started meanwhile.

        QueueFull when the queue is at its depth. Until the generation is registered nothing here
        yields, so two requests for one chat cannot both start one. `research` (internet mode) runs
        after the start event and returns text for the system prompt. `answering` is the id of the
        latest message, the one the reply answers.
        """
        existing = self.current(chat_id)
        if existing and not existing.finished:
            return existing
        if self.preparing + len(self.waiting) + (self.running is not None) >= self.queue_size:
            raise QueueFull
        generation = Generation(self, app, chat_id, mode, options, answering)
        self._remember(generation)
        self.preparing += 1
        try:
            self._prepare(generation, history, system_prompt, options, research)
        except Exception as exc:
            app.logger.exception("preparing the reply failed")
            generation.finish("error", {"code": 500, "message": f"the reply could not be prepared: {exc}"})
            return generation
        finally:
            self.preparing -= 1
        self.waiting.append(generation)
        if generation.cancelled:  # stopped while it was being prepared
            self.withdraw(generation)
            return generation
        if self.running is not None or len(self.waiting) > 1:
            generation.publish("queued", {"position": len(self.waiting)})
        self._work.set()
        # Covers a request that went away before it ever read its stream.
        gevent.spawn_later(self.grace_seconds, generation._cancel_if_unheard)
        return generation

    def _prepare(self, generation, history, system_prompt, options, research) -> None:
        """Build the prompt (history trimmed to fit), announce the reply, then add web sources if asked.

        Room for sources is kept before trimming, so `start.truncated` stays true once they are added.
        """
        budget = self.model.n_ctx - options.max_tokens
        reserve = min(SOURCES_ROOM, budget // 2) if research else 0
        prompt = self.build_prompt(system_prompt, history, budget - reserve)
        generation.begin(prompt)
        if research:
            extra = research(generation, budget - len(prompt.tokens) - SOURCES_MARGIN)
            if extra:
                generation.job.prompt = self.build_prompt(f"{system_prompt}\n\n{extra}", history, budget)

    def build_prompt(self, system_prompt: str, history: list[Message], budget: int) -> Prompt:
        # Tokenizing runs in another real thread (llama.cpp's tokenizer is safe beside decoding):
        # a long history must not stall the hub, and greenlets never call llama.cpp themselves.
        return gevent.get_hub().threadpool.apply(self.prompts.build, (system_prompt, history, budget))

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of texts, from the hub's thread pool (see build_prompt)."""
        return gevent.get_hub().threadpool.apply(lambda: [len(self.model.tokenize(t)) for t in texts])

    def _remember(self, generation: Generation) -> None:
        """The chat's latest generation, kept for joins and reconnects; the oldest finished are dropped."""
        self.by_chat[generation.chat_id] = generation
        self.by_chat.move_to_end(generation.chat_id)
        while len(self.by_chat) > FINISHED_KEPT:
            oldest = next(iter(self.by_chat.values()))
            if not oldest.finished:
                break
            self.by_chat.popitem(last=False)

    def withdraw(self, generation: Generation) -> None:
        """Take a cancelled generation out of the queue (a running one stops at its next token)."""
        if generation in self.waiting:
            self.waiting.remove(generation)
            self._announce_positions()
            now = time.monotonic()
            generation.save(Result("cancelled", len(generation.job.prompt.tokens), 0, 0, now, None, now))

    def _announce_positions(self) -> None:
        for position, waiting in enumerate(self.waiting, start=1):
            waiting.publish("queued", {"position": position})

    def _dispatch(self) -> None:
        """Feed the engine thread one generation at a time, in arrival order."""
        while True:
            if not self.waiting:
                self._work.clear()
                self._work.wait()
                continue
            generation = self.running = self.waiting.popleft()
            generation.dequeued = time.monotonic()
            self._announce_positions()
            try:
                result = self.pool.spawn(self.engine.generate, generation.job).get()
            except Exception as exc:
                generation.app.logger.exception("generation failed")
                generation.finish("error", {"code": 500, "message": f"generation failed: {exc}"})
            else:
                # Queued behind the text callbacks the engine thread already made, so no piece is lost;
                # saving talks to the database, which the hub itself must not do: a greenlet does.
                generation.hub.loop.run_callback(gevent.spawn, generation.save, result)
            finally:
                self.running = None


def options_from(args: dict, settings: dict) -> Options:
    given = {name: value for name, value in args.items() if name in Options.__dataclass_fields__}
    return Options(**{**asdict(default_options(settings)), **given})


def default_options(settings: dict) -> Options:
    return Options(
        max_tokens=settings["CHATAPI_MAX_TOKENS"],
        temperature=0.7,
        top_p=0.95,
        seed=int.from_bytes(uuid.uuid4().bytes[:4], "little"),
    )

"""The model room's service: the model (load and status), the queue in front of it, and the replies of
every chat. It knows nothing of HTTP or the database: the app gives each reply a `save` callback.
"""

import _queue  # the C SimpleQueue: gevent's monkey-patching leaves it a real thread-blocking queue
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import gevent
from gevent.threadpool import ThreadPool

from .engine import Engine, Job, Options, Result
from .model import BATCH_SIZE, Model, default_model_path
from .prompt import LAYOUTS, Message, Prompt, PromptBuilder
from .reply import Reply

FINISHED_KEPT = 1000  # finished replies remembered for reconnects
SOURCES_MARGIN = 48  # tokens for the lines that join the sources to the prompt
log = logging.getLogger(__name__)

# Internet mode's step between announcing a reply and queueing it: (reply, room in tokens) -> prompt text.
Research = Callable[[Reply, int], str]
# Stores a finished reply (reply.text, reply.sources); returns the saved message, or None when the reply has
# no text. Raises ChatGone when the chat was deleted meanwhile, StoreUnavailable when it cannot be saved for now.
SaveReply = Callable[[Reply], dict | None]
# Told of each event a reply publishes: (reply, event name or None for a text piece, data).
ReplyEvents = Callable[[Reply, str | None, dict], None]


class QueueFull(Exception):
    pass


class ChatGone(Exception):
    """The chat was deleted while its reply was being made."""


class StoreUnavailable(Exception):
    """The reply could not be saved because its store (the database) cannot be reached for now."""


@dataclass(frozen=True)
class Settings:
    """The model room's settings, from the app's CHATAPI_* configuration."""

    model_path: str | None  # None: the bundled model, assembled into model_cache
    model_cache: str
    n_ctx: int
    n_threads: int
    max_tokens: int
    parallel: int  # replies generated together
    step_tokens: int  # tokens decoded in one engine step at most: a long prompt is read in chunks this size
    queue_size: int  # replies waiting or running at once; more get QueueFull
    kv_chats: int  # chats whose KV cache is kept (at least `parallel`: each running reply holds one)
    ping_seconds: float
    grace_seconds: float  # a reply nobody listens to for this long is stopped
    sources_tokens: int  # internet mode: room kept for web sources (at most half the prompt)
    sources_layout: str  # internet mode: where the sources go (prompt.LAYOUTS)

    @classmethod
    def from_config(cls, config: Mapping, model_cache: str) -> "Settings":
        if config["CHATAPI_SOURCES_LAYOUT"] not in LAYOUTS:
            raise ValueError(f"CHATAPI_SOURCES_LAYOUT must be one of {', '.join(LAYOUTS)}")
        return cls(
            model_path=config["CHATAPI_MODEL_PATH"],
            model_cache=model_cache,
            n_ctx=config["CHATAPI_N_CTX"],
            n_threads=config["CHATAPI_N_THREADS"],
            max_tokens=config["CHATAPI_MAX_TOKENS"],
            parallel=config["CHATAPI_PARALLEL"],
            # Room for every running reply's token and some prompt, within one llama.cpp batch.
            step_tokens=min(max(config["CHATAPI_STEP_TOKENS"], config["CHATAPI_PARALLEL"] + 1), BATCH_SIZE),
            queue_size=config["CHATAPI_QUEUE_SIZE"],
            kv_chats=max(config["CHATAPI_KV_CHATS"], config["CHATAPI_PARALLEL"]),
            ping_seconds=config["CHATAPI_PING_SECONDS"],
            grace_seconds=config["CHATAPI_GRACE_SECONDS"],
            sources_tokens=max(0, config["CHATAPI_SOURCES_TOKENS"]),
            sources_layout=config["CHATAPI_SOURCES_LAYOUT"],
        )


class Threads:
    """The model's thread count: one fewer while other work needs a core.

    llama.cpp's threads meet at a barrier after every operation of the model, spinning there to be quick.
    When other work (the server answering requests, the clients, another program) takes a core from one of
    them, the others spin waiting for it: a reply on 2 cores fell from ~70 to 2-23 tokens/s beside
    back-to-back API requests (sleeping at the barriers instead holds ~43 but costs 40% when nothing else
    runs). So every WINDOW the model's thread reads how much CPU the rest of the machine used (the event loop
    of this process included, the model's own threads not) and runs one thread fewer while that is more than
    OTHERS_LIMIT of a core. Measured in bench/batching.py (threads table)."""

    WINDOW = 0.1  # seconds between two readings
    OTHERS_LIMIT = 0.5  # cores of other work from which the model leaves one to it

    def __init__(self, model: Model, n_threads: int, loop_thread: int):
        self.model = model
        self.full = n_threads
        self.current = n_threads
        self.loop_thread = loop_thread  # the event loop's native thread id: its CPU is other work
        self.last: tuple[float, float] | None = None  # (when, CPU seconds of other work until then)

    def adjust(self, now: float) -> None:
        if self.full == 1 or (self.last and now - self.last[0] < self.WINDOW):
            return
        others = other_cpu_seconds(self.loop_thread)
        if others is None:  # not Linux: the count stays
            return
        if self.last:
            self.set(self.wanted((others - self.last[1]) / (now - self.last[0])))
        self.last = (now, others)

    def wanted(self, other_cores: float) -> int:
        return self.full - 1 if other_cores > self.OTHERS_LIMIT else self.full

    def set(self, n_threads: int) -> None:
        if n_threads != self.current:
            self.current = n_threads
            self.model.set_threads(n_threads)


def other_cpu_seconds(loop_thread: int) -> float | None:
    """CPU seconds the machine spent on anything but this process's model threads (Linux; else None)."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
        loop = thread_cpu_seconds(loop_thread)
    except (OSError, ValueError):
        return None
    process = os.times()
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return machine - (process.user + process.system) + loop


def thread_cpu_seconds(thread: int) -> float:
    """CPU seconds one native thread of this process has used."""
    with open(f"/proc/self/task/{thread}/stat") as stat:
        user, system = map(int, stat.read().rsplit(")", 1)[1].split()[11:13])
    return (user + system) / os.sysconf("SC_CLK_TCK")


class ReplyService:
    """The process's model, its queue, and the replies of every chat."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = ThreadPool(1)  # the one real OS thread that owns the model
        self.status = "not loaded"
        self.error: str | None = None
        self.model: Model | None = None
        self.prompts: PromptBuilder | None = None
        self.engine: Engine | None = None
        self.waiting: deque[Reply] = deque()
        self.running: list[Reply] = []
        self.preparing = 0  # replies whose prompt is being built
        self.by_chat: OrderedDict[uuid.UUID, Reply] = OrderedDict()
        self.saves: dict[Reply, SaveReply] = {}  # replies not finished yet, and how each is stored
        self.hub = None  # the server's event loop, which the model's thread reports to
        self.loop_thread = 0  # its native thread id
        self._admitted: _queue.SimpleQueue = _queue.SimpleQueue()  # jobs handed to the model's thread
        self._step_texts: list[tuple[Reply, str]] = []  # the model's thread's own: text of the current step

    def load(self) -> None:
        """Start loading the model in its thread, once. The server calls this as its worker starts
        (gunicorn.conf.py); elsewhere the first request that needs the model does (not `flask db upgrade`)."""
        if self.status == "not loaded":
            self.status = "loading"
            self.hub = gevent.get_hub()
            self.loop_thread = threading.get_native_id()
            self.pool.spawn(self._load)

    def _load(self) -> None:
        """Runs in the model's thread, then stays there running steps; plain attribute writes, so no hub is
        needed to see the result."""
        s = self.settings
        try:
            path = s.model_path or default_model_path(s.model_cache)
            self.model = Model(path, s.n_ctx, s.n_threads, s.kv_chats)
            self.prompts = PromptBuilder(self.model)
            self.engine = Engine(self.model, s.step_tokens)
            self.status = "ok"
        except Exception as exc:
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        self._run_steps()

    def describe(self) -> dict:
        self.load()
        described = {"status": self.status}
        if self.model:
            described.update(name=self.model.name, n_ctx=self.model.n_ctx, path=self.model.path)
        if self.error:
            described["reason"] = self.error
        described["replies"] = {"running": len(self.running), "waiting": self.preparing + len(self.waiting)}
        return described

    def options_from(self, given: dict) -> Options:
        """The reply's options: the request's, else the defaults (a fresh seed each time)."""
        defaults = Options(
            max_tokens=self.settings.max_tokens,
            temperature=0.7,
            top_p=0.95,
            seed=int.from_bytes(uuid.uuid4().bytes[:4], "little"),
        )
        known = {name: value for name, value in given.items() if name in Options.__dataclass_fields__}
        return Options(**{**asdict(defaults), **known})

    # Starting, joining, stopping

    def current(self, chat_id: uuid.UUID) -> Reply | None:
        """The chat's latest reply, running or finished, while it is remembered."""
        return self.by_chat.get(chat_id)

    def start(
        self,
        chat_id: uuid.UUID,
        mode: str,
        history: list[Message],
        system_prompt: str,
        options: Options,
        answering: uuid.UUID | None,
        save: SaveReply,
        research: Research | None = None,
        on_event: ReplyEvents | None = None,
        replacing: uuid.UUID | None = None,
        stops: list[str] | None = None,
        by_prefix: bool = False,
    ) -> Reply:
        """Queue the chat's next reply, or return the one another request started meanwhile.

        QueueFull when the queue is at its depth. Until the reply is registered nothing here yields, so
        two requests for one chat cannot both start one. `answering` is the id of the message the reply
        answers; `research` (internet mode) runs after the start event and returns text for the system prompt;
        `on_event` is told of the new reply's events (not of a running reply's that is returned instead);
        `replacing` (regenerate) is the id of the message the reply is saved in place of.
        """
        existing = self.current(chat_id)
        if existing and not existing.finished:
            return existing
        if self.preparing + len(self.waiting) + len(self.running) >= self.settings.queue_size:
            raise QueueFull
        s = self.settings
        reply = Reply(
            chat_id, mode, options, answering, s.ping_seconds, s.grace_seconds, self.cancel, on_event, replacing
        )
        reply.job.on_text = lambda text: self._step_texts.append((reply, text))
        reply.job.by_prefix = by_prefix
        self._remember(reply)
        self.saves[reply] = save
        self.preparing += 1
        try:
            self._prepare(reply, history, system_prompt, options, research, stops or [])
        except Exception as exc:
            log.exception("preparing the reply failed")
            self.saves.pop(reply)
            reply.finish("error", {"code": 500, "message": f"the reply could not be prepared: {exc}"})
            return reply
        finally:
            self.preparing -= 1
        self.waiting.append(reply)
        if reply.cancelled:  # stopped while it was being prepared
            self.cancel(reply)
            return reply
        behind = len(self.running) + len(self.waiting) - self.settings.parallel
        if behind > 0:
            reply.publish("queued", {"position": behind})
        self._admit()
        reply.watch_listeners()  # covers a request that went away before it ever read its stream
        return reply

    def is_running(self, chat_id: uuid.UUID) -> bool:
        """Whether a reply is being made for the chat (prepared, queued or generated)."""
        reply = self.current(chat_id)
        return reply is not None and not reply.finished

    def forget(self, chat_id: uuid.UUID) -> None:
        """Forget the chat's finished reply: its messages were deleted, so what it answered may be answered
        again, also by a request with `after` or a Last-Event-ID of it."""
        reply = self.current(chat_id)
        if reply is not None and reply.finished:
            del self.by_chat[chat_id]

    def stop(self, chat_id: uuid.UUID) -> bool:
        """Stop the chat's reply if one is being made; its partial text is saved as cancelled."""
        if not self.is_running(chat_id):
            return False
        self.cancel(self.current(chat_id))
        return True

    def cancel(self, reply: Reply) -> None:
        """A queued reply leaves the queue at once; a running one stops at its next token."""
        reply.job.cancelled = True
        if reply.reading_ahead:
            reply.reading_ahead.cancelled = True
        if reply in self.waiting:
            self.waiting.remove(reply)
            self._announce_positions()
            now = time.monotonic()
            self._end(reply, Result("cancelled", len(reply.job.prompt.tokens), 0, 0, now, None, now))

    def _prepare(self, reply, history, system_prompt, options, research, stops) -> None:
        """Build the prompt (history trimmed to fit), announce the reply, then add web sources if asked.

        Room for sources is kept before trimming, so `start.truncated` stays true once they are added. While
        the web is searched and read, the model reads the part of the prompt that comes before them.
        """
        s = self.settings
        budget = self.model.n_ctx - options.max_tokens
        reserve = min(s.sources_tokens, budget // 2) if research else 0
        prompt = self.in_thread(self.prompts.build, system_prompt, history, budget - reserve)
        prompt.stop = [*prompt.stop, *stops]  # a copy: the builder's list is every prompt's
        reply.begin(prompt)
        if research:
            self._read_ahead(reply, prompt)
            extra = research(reply, reserve - SOURCES_MARGIN)  # CHATAPI_SOURCES_TOKENS, the joining lines included
            if extra:
                reply.job.prompt = self.in_thread(self.prompts.with_sources, prompt, extra, s.sources_layout)

    def _read_ahead(self, reply: Reply, prompt: Prompt) -> None:
        """Have the model read the prompt up to where the sources go into the chat's cache now, unless
        replies are waiting for the model (then it has no time to spare)."""
        if self.settings.sources_layout == "system" or self.waiting or prompt.head < 2:
            return
        ahead = Prompt(prompt.tokens[: prompt.head], prompt.stop, prompt.truncated)
        reply.reading_ahead = Job(reply.chat_id, ahead, reply.job.options, on_text=len, read_only=True)
        self._admitted.put(reply.reading_ahead)

    def in_thread(self, function, *args):
        """Prompts are tokenized in another real thread (llama.cpp's tokenizer is safe beside decoding):
        a long history must not stall the hub, and greenlets never call llama.cpp themselves."""
        return gevent.get_hub().threadpool.apply(function, args)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of texts, tokenized in another thread (see in_thread)."""
        return self.in_thread(lambda: [len(self.model.tokenize(t)) for t in texts])

    def _remember(self, reply: Reply) -> None:
        """The chat's latest reply, kept for joins and reconnects; the oldest finished are dropped."""
        self.by_chat[reply.chat_id] = reply
        self.by_chat.move_to_end(reply.chat_id)
        while len(self.by_chat) > FINISHED_KEPT:
            oldest = next(iter(self.by_chat.values()))
            if not oldest.finished:
                break
            self.by_chat.popitem(last=False)

    def _announce_positions(self) -> None:
        for position, waiting in enumerate(self.waiting, start=1):
            waiting.publish("queued", {"position": position})

    def _admit(self) -> None:
        """Hand waiting replies (in arrival order) to the model's thread while it has places for them."""
        admitted = False
        while self.waiting and len(self.running) < self.settings.parallel:
            reply = self.waiting.popleft()
            reply.dequeued = time.monotonic()
            self.running.append(reply)
            self._admitted.put(reply.job)
            admitted = True
        if admitted:
            self._announce_positions()

    def _run_steps(self) -> None:
        """The model's thread, for good: engine steps back to back while replies run, asleep while none do.

        The steps never wait for the server's event loop, however busy it is with requests: after each one,
        a single callback hands the loop the step's text and the replies that ended."""
        engine = self.engine
        threads = Threads(self.model, self.settings.n_threads, self.loop_thread)
        while True:
            threads.adjust(time.monotonic())
            new = [] if engine.slots else [self._admitted.get()]
            while not self._admitted.empty():
                new.append(self._admitted.get())
            try:
                ended, error = engine.step(new), None
            except Exception as exc:  # the engine has dropped every running job
                log.exception("generation failed")
                ended, error = [], exc
            texts, self._step_texts = self._step_texts, []
            if texts or ended or error:
                self.hub.loop.run_callback_threadsafe(self._after_step, texts, ended, error)

    def _after_step(self, texts: list[tuple[Reply, str]], ended: list[tuple[Job, Result]], error) -> None:
        """In the event loop: publish a step's text, end the replies it finished, admit waiting ones."""
        for reply, text in texts:
            reply.add_text(text)
        if error is not None:
            for reply in self.running:
                self.saves.pop(reply)
                reply.finish("error", {"code": 500, "message": f"generation failed: {error}"})
            self.running = []
        for job, result in ended:
            reply = next(r for r in self.running if r.job is job)
            # Saving talks to the database, which the event loop itself must not do: a greenlet does.
            gevent.spawn(self._end_running, reply, result)
        self._admit()

    def _end_running(self, reply: Reply, result: Result) -> None:
        """End a reply the engine finished, and only then give its place to the next: the one behind it
        starts after `done` (a save to PostgreSQL can take longer than a step)."""
        try:
            self._end(reply, result)
        finally:
            if reply in self.running:  # a failed step has already emptied the list
                self.running.remove(reply)
            self._admit()

    def _end(self, reply: Reply, result: Result) -> None:
        """Store the reply through its `save` callback and send `done` with it (or `error`)."""
        save = self.saves.pop(reply)
        try:
            saved = save(reply)
        except ChatGone:
            return reply.finish("error", {"code": 404, "message": f"chat {reply.chat_id} was deleted"})
        except StoreUnavailable as exc:
            log.error("the reply could not be saved: %s", exc.__cause__ or exc)
            return reply.finish("error", {"code": 503, "message": str(exc)})
        except Exception as exc:  # the stream must still end with an event
            log.exception("saving the reply failed")
            return reply.finish("error", {"code": 500, "message": f"the reply could not be saved: {exc}"})
        done = {"message": saved, "finish_reason": result.finish_reason, "usage": usage(result)}
        done["citations"] = saved.get("citations") if saved else None  # the saved message's, at the top too
        reply.finish("done", {**done, "timings": timings(reply, result)})


def usage(result: Result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_tokens": result.cached_tokens,
    }


def timings(reply: Reply, result: Result) -> dict:
    generating = result.ended - (result.first_token or result.ended)
    return {
        "queue_ms": round(((reply.dequeued or result.started) - reply.created) * 1000, 1),
        "ttft_ms": round(((result.first_token or result.ended) - reply.created) * 1000, 1),
        "total_ms": round((result.ended - reply.created) * 1000, 1),
        "tokens_per_second": round((result.completion_tokens - 1) / generating, 1) if generating > 0 else None,
        **reply.research_timings,
    }

"""The model room's queue: the replies of every chat, and the queue in front of the backend that makes them. It
knows nothing of HTTP or the database (the app's hooks in each ReplyRequest save the reply and hear of its events),
nor which backend makes the text: the model in this process (local.py) or an OpenAI-compatible server (remote.py),
to which it hands prepared replies. With Redis (redis_replies.py) the chats' replies are also found, resumed and
stopped across processes.
"""

import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict

import gevent

from .catalog import UnknownModel
from .engine import Options, Result
from .local import LocalBackend
from .model import NotGGUF
from .prompt import ContextLengthExceeded
from .redis_replies import Board
from .remote import RemoteBackend
from .reply import ChatGone, Reply, ReplyRequest, Resumable, StoreUnavailable
from .settings import ModelSettings

SOURCES_MARGIN = 48  # tokens for the lines that join the sources to the prompt
log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds CHATAPI_QUEUE_SIZE replies already: try again in a few seconds."""


class ModelNotReady(Exception):
    """Replies cannot be started: the model is loading, or failed to load (why: in the log and keyed /health)."""

    def __init__(self, status: str, model: str | None = None):
        name = f"the model {model}" if model else "the model"
        super().__init__(f"{name} failed to load" if status == "failed" else f"{name} is {status}")


class ReplyService:
    """The replies of every chat, the queue in front of the backend that makes them, and that backend."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        backend = RemoteBackend if settings.backend == "openai" else LocalBackend
        self.backend = backend(settings, on_end=self._ended, on_failure=self._failed)
        self.backend.on_ready = self._admit  # a model loaded or gave way: replies waiting for it may start
        self.waiting: deque[Reply] = deque()
        self.running: list[Reply] = []
        self.preparing = 0  # replies whose prompt is being built
        self.by_chat: dict[uuid.UUID, Reply] = {}  # each chat's latest reply: running, or finished and kept
        # The chats whose reply in by_chat is finished, oldest first, with the bytes each holds (within kept_bytes).
        self.kept: OrderedDict[uuid.UUID, int] = OrderedDict()
        self.kept_total = 0
        self.requests: dict[Reply, ReplyRequest] = {}  # replies not finished yet, and what each answers
        self.research_timings: dict[Reply, dict] = {}  # internet mode: unfinished replies' research, for `done`
        self.board: Board | None = None
        if settings.redis_url:
            s = settings
            self.board = Board(s.redis_url, s.redis_prefix, s.redis_lease, s.redis_ttl, s.grace_seconds, s.ping_seconds)
            self.board.on_stop = self.cancel
            self.board.on_deleted = self.backend.forget_chat

    def load(self) -> None:
        """Get the backend ready, once (the local one loads its model in its thread). The server calls this as its
        worker starts (gunicorn.conf.py); elsewhere the first request that needs the model does."""
        self.backend.load()
        if self.board is not None:
            self.board.listen()

    def ready(self, model_id: str | None = None) -> None:
        """Get the backend ready (load); ModelNotReady unless replies for the model (an id; None: the default) can be
        started now: the default model is loading as the server starts, or the model failed to load."""
        self.load()
        status = self.backend.readiness(model_id) if model_id else self.status
        if status != "ok":
            raise ModelNotReady(status, model_id)

    @property
    def catalog(self):
        """The models this server can load (llm/catalog.py); None on the remote backend, whose server has its own."""
        return getattr(self.backend, "catalog", None)

    def resolve(self, name: str | None) -> str:
        """The id of the model `name` names (None: the default); UnknownModel for none (a remote server is asked
        for its list: UpstreamError)."""
        return self.backend.resolve(name)

    def model_listing(self) -> list[dict]:
        """Every model, in the API's representation (llm/catalog.ModelEntry.public)."""
        return self.backend.listing()

    def forget_model(self, model_id: str) -> None:
        """The model was removed from the catalog: it is unloaded once its running replies end."""
        self.backend.forget_model(model_id)

    def kv_files(self):
        """The chats' states on disk (kv_files.KvFiles; None on the remote backend)."""
        return getattr(self.backend, "kv", None)

    def loaded_models(self) -> list[dict]:
        """The models in this process's memory: [{"id", "status", "load_seconds"}] (none on the remote backend)."""
        return self.backend.describe_loaded() if hasattr(self.backend, "describe_loaded") else []

    @property
    def on_model_change(self):
        return getattr(self.backend, "on_model_change", None)

    @on_model_change.setter
    def on_model_change(self, hook) -> None:
        """(model id, status, load seconds) for each model loaded (ok), failed to load, or unloaded (the metrics)."""
        self.backend.on_model_change = hook

    def context_window(self, model_id: str) -> int:
        """The context window of a reply of the model, in tokens."""
        return self.backend.context_window(model_id)

    def check_grammar(self, model_id: str, grammar: str) -> None:
        """UnsupportedSchema (chatapi/llm/grammar.py) when llama.cpp cannot parse the grammar for the model, before
        any reply is made with it; a remote model server enforces (or refuses) schemas itself."""
        if hasattr(self.backend, "check_grammar"):
            self.backend.check_grammar(model_id, grammar)

    @property
    def status(self) -> str:
        """Whether replies can be started: "ok", else "not loaded", "loading" or "failed" (see `error`)."""
        return self.backend.status

    @property
    def error(self) -> str | None:
        return self.backend.error

    def describe(self) -> dict:
        """The backend's state for /health: its status (not "ok": and the reason), the model, the replies."""
        self.load()
        described = self.backend.describe()
        described["replies"] = {"running": len(self.running), "waiting": self.preparing + len(self.waiting)}
        return described

    def redis_problem(self) -> str | None:
        """Why the Redis that replies are shared through cannot be used now; None when it can, or is not used."""
        return self.board.problem() if self.board is not None else None

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

    def current(self, chat_id: uuid.UUID) -> Resumable | None:
        """The chat's latest reply, running or finished, while it is remembered: with Redis, in whichever process
        made it."""
        local = self.by_chat.get(chat_id)
        return local if self.board is None else self.board.current(chat_id, local)

    def start(self, request: ReplyRequest) -> Resumable:
        """Queue the chat's next reply, or return the one another request started meanwhile.

        QueueFull when the queue is at its depth. Until the reply is registered nothing here yields, so two requests
        for one chat in this process cannot both start one; with Redis a resumable reply claims its chat across
        processes, and the reply another process is making for the chat is returned instead (RedisError when Redis
        cannot be reached). The caller has looked the chat's current reply up already (a running one is joined, not
        started again): only this process's memory is looked at here, and Redis is asked by the claim (or, with the
        queue full, whether another process holds the chat). A resumable reply is kept for reconnects once finished,
        within CHATAPI_REPLIES_KEPT_MB. A reply that may not be `cut` whose messages do not fit raises
        ContextLengthExceeded (its `max_tokens` set), and there is no reply.
        """
        chat_id = request.chat_id
        shared = request.resumable and self.board is not None
        existing = self.by_chat.get(chat_id)
        if existing and not existing.finished:
            return existing
        if self.preparing + len(self.waiting) + len(self.running) >= self.settings.queue_size:
            holder = self.board.holder(chat_id) if shared else None  # one started elsewhere meanwhile is joined
            if holder is not None:
                return self.board.view(chat_id, holder, None)
            raise QueueFull
        reply = Reply(request, self.settings.ping_seconds, self.settings.grace_seconds, self.cancel)
        reply.model = request.model or self.backend.resolve(None)
        if shared:
            holder = self.board.claim(reply)  # may yield: another request may have started one meanwhile
            if holder is not None:
                return self.board.view(chat_id, holder, self.by_chat.get(chat_id))
        self._remember(reply)
        self.requests[reply] = request
        self.preparing += 1
        try:
            self._prepare(reply, request)
        except ContextLengthExceeded as exc:
            self.requests.pop(reply)
            del self.by_chat[chat_id]
            exc.max_tokens = request.options.max_tokens  # the window's other part, which its client is told of
            raise
        except NotGGUF as exc:  # the model's file cannot be read: it is not loaded either
            self.requests.pop(reply)
            self._finish(reply, "error", {"code": 503, "message": f"the model {reply.model} failed to load: {exc}"})
            return reply
        except UnknownModel:  # removed while the prompt was built (internet mode: while the web was read)
            self.requests.pop(reply)
            self._finish(reply, "error", {"code": 409, "message": f"the model {reply.model} was removed"})
            return reply
        except Exception:
            log.exception("preparing the reply failed")
            self.requests.pop(reply)
            self._finish(reply, "error", {"code": 500, "message": "the reply could not be prepared"})  # why: in the log
            return reply
        finally:
            self.preparing -= 1
        self.waiting.append(reply)
        if reply.cancelled:  # stopped while it was being prepared
            self.cancel(reply)
            return reply
        self._admit()
        if reply in self.waiting:
            reply.publish("queued", {"position": self.waiting.index(reply) + 1})
        reply.watch_listeners()  # covers a request that went away before it ever read its stream
        return reply

    def is_running(self, chat_id: uuid.UUID) -> bool:
        """Whether a reply is being made for the chat (prepared, queued or generated), here or, with Redis,
        in any process."""
        reply = self.by_chat.get(chat_id)
        if reply is not None and not reply.finished:
            return True
        return self.board is not None and self.board.holder(chat_id) is not None

    def forget(self, chat_id: uuid.UUID) -> None:
        """Forget the chat's finished reply: its messages were deleted, so what it answered may be answered
        again, also by a request with `after` or a Last-Event-ID of it."""
        reply = self.by_chat.get(chat_id)
        if reply is not None and reply.finished:
            self._unkeep(chat_id)
            del self.by_chat[chat_id]
        if self.board is not None:
            self.board.forget(chat_id)

    def forget_chat(self, chat_id: uuid.UUID) -> None:
        """The chat was deleted: stop its reply, and what the model kept of it (its saved state) goes, in every
        process (with Redis, each one is told)."""
        self.stop(chat_id)
        self.backend.forget_chat(chat_id)
        if self.board is not None:
            self.board.announce_deleted(chat_id)

    def stop(self, chat_id: uuid.UUID) -> bool:
        """Stop the chat's reply if one is being made (with Redis, by whichever process makes it); its partial text
        is saved as cancelled."""
        reply = self.by_chat.get(chat_id)
        if reply is not None and not reply.finished:
            self.cancel(reply)
            return True
        return self.board is not None and self.board.request_stop(chat_id)

    def cancel(self, reply: Reply) -> None:
        """A queued reply leaves the queue at once; a running one stops at its next token (its request to a
        remote server is closed)."""
        reply.job.cancelled = True
        if reply.reading_ahead:
            reply.reading_ahead.cancelled = True
        if reply in self.waiting:
            self.waiting.remove(reply)
            self._announce_positions()
            now = time.monotonic()
            tokens = reply.job.prompt.tokens  # None: a remote server's prompt, which only it counts
            counted = len(tokens) if tokens is not None else None
            note = None if tokens is not None else "stopped before the model server was asked"
            cached = 0 if tokens is not None else None
            self._end(reply, Result("cancelled", counted, 0, cached, now, None, now, note))
        elif reply in self.running:
            self.backend.cancel(reply)

    def _prepare(self, reply: Reply, request: ReplyRequest) -> None:
        """Build the prompt (history trimmed to fit, or a raw prompt as it is), announce the reply, then add web
        sources if asked.

        Room for sources is kept before trimming, so `start.truncated` stays true once they are added. While
        the web is searched and read, the local model reads the part of the prompt that comes before them.
        """
        s = self.settings
        backend = self.backend
        model = reply.model
        budget = backend.context_window(model) - request.options.max_tokens
        reserve = min(s.sources_tokens, budget // 2) if request.research else 0
        if request.raw_prompt is not None:
            prompt = backend.build_raw(model, request.raw_prompt, budget)
        else:
            history = list(request.history)
            prompt = backend.build(model, request.system_prompt, history, budget - reserve, request.cut, request.tools)
        prompt.stop = [*prompt.stop, *request.stops]  # a copy: the builder's list is every prompt's
        reply.begin(prompt)
        if request.research:
            backend.read_ahead(reply, prompt, busy=bool(self.waiting))
            researched = request.research(reply, reserve - SOURCES_MARGIN)  # the joining lines within the reserve
            self.research_timings[reply] = researched.timings
            if researched.prompt:
                reply.job.prompt = backend.with_sources(model, prompt, researched.prompt, s.sources_layout)

    def count_tokens(self, model_id: str, texts: list[str]) -> list[int]:
        """Token counts of texts by the model's tokenizer (internet mode sizes its sources with them)."""
        return self.backend.count_tokens(model_id, texts)

    def _remember(self, reply: Reply) -> None:
        """The chat's latest reply, for joins and reconnects (in place of its previous one, finished)."""
        self._unkeep(reply.chat_id)
        self.by_chat[reply.chat_id] = reply

    def _finish(self, reply: Reply, event: str, data: dict) -> None:
        """End the reply with its last event. A resumable one is then kept for reconnects with its events only,
        the oldest finished replies giving way to stay within kept_bytes; one that nobody can resume (/v1's) is
        forgotten: its request holds it until its response is sent."""
        self.research_timings.pop(reply, None)
        reply.finish(event, data)
        reply.let_go()
        if self.by_chat.get(reply.chat_id) is not reply:
            return
        if not reply.resumable:
            del self.by_chat[reply.chat_id]
            return
        size = reply.keep_for_reconnects()
        self.kept[reply.chat_id] = size
        self.kept_total += size
        while self.kept_total > self.settings.kept_bytes:
            oldest, size = self.kept.popitem(last=False)
            del self.by_chat[oldest]
            self.kept_total -= size

    def _unkeep(self, chat_id: uuid.UUID) -> None:
        """The chat's finished reply is no longer counted as kept (the caller replaces or forgets it)."""
        size = self.kept.pop(chat_id, None)
        if size is not None:
            self.kept_total -= size

    def _announce_positions(self) -> None:
        for position, waiting in enumerate(self.waiting, start=1):
            waiting.publish("queued", {"position": position})

    def _admit(self) -> None:
        """Hand the backend the waiting replies it can take now (which, and in what order: its `admissible`)."""
        starting = self.backend.admissible(self.waiting, self.running)
        for reply in starting:
            self.waiting.remove(reply)
            reply.dequeued = time.monotonic()
            self.running.append(reply)
        for reply in starting:
            self.backend.generate(reply)
        if starting:
            self._announce_positions()

    def _ended(self, reply: Reply, result: Result) -> None:
        """The backend finished a reply (in the event loop). Saving talks to the database, which the event loop
        itself must not do: a greenlet does."""
        gevent.spawn(self._end_running, reply, result)

    def _failed(self, reply: Reply, code: int, message: str) -> None:
        """The backend could not make a reply: it ends with an `error` event, and nothing is saved."""
        self.requests.pop(reply, None)
        self._finish(reply, "error", {"code": code, "message": message})
        if reply in self.running:
            self.running.remove(reply)
        self._admit()

    def _end_running(self, reply: Reply, result: Result) -> None:
        """End a reply the backend finished, and only then give its place to the next: the one behind it
        starts after `done` (a save to PostgreSQL can take longer than a step)."""
        try:
            self._end(reply, result)
        finally:
            if reply in self.running:  # a failed step has already taken it out
                self.running.remove(reply)
            self._admit()

    def _end(self, reply: Reply, result: Result) -> None:
        """Store the reply through its `save` callback and send `done` with it (or `error`)."""
        request = self.requests.pop(reply)
        try:
            saved = request.save(reply)
        except ChatGone:
            return self._finish(reply, "error", {"code": 404, "message": f"chat {reply.chat_id} was deleted"})
        except StoreUnavailable as exc:
            log.error("the reply could not be saved: %s", exc.__cause__ or exc)
            return self._finish(reply, "error", {"code": 503, "message": str(exc)})
        except Exception:  # the stream must still end with an event; why (SQL, parameters) goes to the log only
            log.exception("saving the reply failed")
            return self._finish(reply, "error", {"code": 500, "message": "the reply could not be saved"})
        done = {"message": saved, "finish_reason": result.finish_reason, "usage": usage(result)}
        done["citations"] = saved.get("citations") if saved else None  # the saved message's, at the top too
        research = self.research_timings.get(reply, {})
        text, job = reply.text, reply.job  # as saved, and as the backend ran it (a finished reply lets go of both)
        self._finish(reply, "done", {**done, "timings": {**timings(reply, result), **research}})
        if saved:  # the chat's state, for its next reply (the local backend's, on disk)
            self.backend.keep_state(reply, request, text, job)


def usage(result: Result) -> dict:
    """The reply's token counts; where the backend knows none (a remote server that reports no usage), None
    and a note that says why, rather than a guess."""
    counts = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_tokens": result.cached_tokens,
    }
    return {**counts, "note": result.usage_note} if result.usage_note else counts


def timings(reply: Reply, result: Result) -> dict:
    """From the reply's start (its chat and history read): time in the queue, to the first token, to the end; and
    the first token's time in parts: building the prompt, handing it to the model, reading it to the first token."""
    generating = result.ended - (result.first_token or result.ended)
    dequeued = reply.dequeued or result.started
    first_token = result.first_token or result.ended
    return {
        "queue_ms": ms(dequeued - reply.created),
        "ttft_ms": ms(first_token - reply.created),
        "total_ms": ms(result.ended - reply.created),
        "tokens_per_second": round((result.completion_tokens - 1) / generating, 1)
        if generating > 0 and result.completion_tokens is not None
        else None,
        "prompt_ms": ms((reply.prepared or reply.created) - reply.created),
        "handoff_ms": ms(max(result.started - dequeued, 0)),
        "prefill_ms": ms(first_token - max(result.started, dequeued)),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)

"""The local backend: the GGUF models in this process, each loaded one owned by one real OS thread that runs its
engine's steps back to back (continuous batching), and the prompts built with each model's tokenizer.

Models load when a reply needs one (the default model as the server starts). At most CHATAPI_MODELS_LOADED stay in
memory; `admissible` decides which waiting replies start, and when a model must give way to another (see there).
"""

import logging
import threading
from collections import Counter, OrderedDict, deque

import gevent

from .catalog import Catalog, ModelEntry, UnknownModel
from .engine import Job
from .grammar import UnsupportedSchema
from .kv_files import KvFiles
from .loaded import LoadedModel, Turns, real_lock
from .model import NotGGUF, Vocabulary, default_model_path
from .prompt import Message, Prompt, PromptBuilder
from .reply import OnEnd, OnFailure, Reply, ReplyRequest

BUILDERS_KEPT = 4  # prompt builders (tokenizers) kept, of the models replies were last built for
log = logging.getLogger(__name__)


class LocalBackend:
    """The models of this process. The service hands it prepared replies (`generate`); it reports, in the event
    loop, each reply's text (to the reply), its end (`on_end`) or a failed step (`on_failure`), and when replies
    that wait may start (`on_ready`, after a model loaded or gave way).

    Which waiting replies start (`admissible`): in the order they came, each as soon as its model is loaded and has
    a place (CHATAPI_PARALLEL replies per model). A waiting reply's model is loaded at once while fewer than
    CHATAPI_MODELS_LOADED are. A reply whose model is not loaded may be passed by later ones whose model is, but
    never waits on them: when the oldest waiting reply's model is not loaded and
    CHATAPI_MODELS_LOADED are, the least recently used model (an idle one first) takes no more replies, is unloaded
    as soon as its running ones end, and the oldest's model is loaded in its place. So every reply waits at most
    for the replies ahead of it, and one load for each model ahead of it."""

    name = "local"

    def __init__(self, settings, on_end: OnEnd, on_failure: OnFailure):
        self.settings = settings
        self.on_end = on_end
        self.on_failure = on_failure
        self.on_ready = lambda: None  # the service's: replies may start now
        self.catalog = Catalog(settings.models_dir or settings.model_cache, settings.model, settings.model_cache)
        self.models: dict[str, LoadedModel] = {}  # loading, loaded, or unloading
        self.failures: dict[str, tuple[ModelEntry | None, str]] = {}  # models that failed to load, and why
        self.ever_loaded: set[str] = set()
        self.giving_way: LoadedModel | None = None  # unloaded once its replies end, for `wanted`
        self.wanted: str | None = None
        self.turns = Turns()
        self.on_model_change = None  # the app's metrics: told of each model loaded, failed or unloaded
        self.hub = None  # the server's event loop, which the models' threads report to
        self.loop_thread = 0  # its native thread id
        # Prompt builders by model id, each with its model's tokenizer (a Vocabulary, loaded without weights).
        self.builders: OrderedDict[str, tuple[ModelEntry, PromptBuilder]] = OrderedDict()
        self.builders_lock = real_lock()  # the builders are made in the hub's threadpool
        self.kv = KvFiles(settings.kv_dir, settings.kv_disk_bytes)  # chats' states on disk
        self.keeping: Counter = Counter()  # by model: replies whose state is about to be saved (it stays loaded)

    def load(self) -> None:
        """Load the default model, once (the server calls this as its worker starts); note it as this process's
        default, which `flask models remove` leaves alone; and read the catalog's headers in the hub's threadpool
        (half a second for a GGUF's vocabulary) rather than at the first request that lists or names a model."""
        if self.hub is None:
            self.hub = gevent.get_hub()
            self.loop_thread = threading.get_native_id()
            self._load(self.catalog.default_id())
            self.catalog.pin_default()
            self.hub.threadpool.spawn(self.catalog.entries)
            if self.kv.enabled:
                self.hub.threadpool.spawn(self.kv.keep_within_budget)

    @property
    def status(self) -> str:
        """Whether replies for the default model can be started: "ok", else "not loaded", "loading" (the server
        is starting) or "failed"."""
        return self.readiness(self.catalog.default_id())

    @property
    def error(self) -> str | None:
        failure = self.failures.get(self.catalog.default_id())
        return failure[1] if failure else None

    def readiness(self, model_id: str) -> str:
        """"failed" when the model's last load failed (until its file changes), "loading" or "not loaded" for the
        default model until it first loaded, else "ok": a model that is not loaded is loaded when a reply needs it."""
        failure = self.failures.get(model_id)
        if failure is not None:
            if failure[0] is not None and failure[0] == self.catalog.get(model_id):
                return "failed"
            del self.failures[model_id]  # its file changed, or it was registered again: try again
        if model_id == self.catalog.default_id() and model_id not in self.ever_loaded:
            loading = self.models.get(model_id)
            return loading.status if loading else "not loaded"
        return "ok"

    def resolve(self, name: str | None) -> str:
        """The id of the model `name` names (None: the default); UnknownModel for none."""
        return self.catalog.resolve(name).id

    def listing(self) -> list[dict]:
        default = self.catalog.default_id()
        return [
            entry.public(loaded=self.is_loaded(entry.id), default=entry.id == default)
            for entry in self.catalog.entries()
        ]

    def is_loaded(self, model_id: str) -> bool:
        loaded = self.models.get(model_id)
        return loaded is not None and loaded.status == "ok"

    def describe(self) -> dict:
        default = self.catalog.default_id()
        described = {"status": self.status, "name": default, "n_ctx": self.context_window(default)}
        loaded = self.models.get(default)
        if loaded is not None and loaded.model is not None:
            described["path"] = loaded.model.path
        if self.error:
            described["reason"] = self.error
        described["loaded"] = self.describe_loaded()
        return described

    def describe_loaded(self) -> list[dict]:
        """The models in memory, or loading or unloading, and how long each took to load."""
        return [
            {"id": m.id, "status": m.status, "load_seconds": round(m.load_seconds, 3) if m.load_seconds else None}
            for m in self.models.values()
        ]

    def context_window(self, model_id: str) -> int:
        """A reply's window: CHATAPI_N_CTX, or less when the model was trained for less."""
        entry = self.catalog.get(model_id)
        trained = entry.context_length if entry is not None else None
        return min(self.settings.n_ctx, trained) if trained else self.settings.n_ctx

    # Prompts

    def build(
        self, model_id: str, system_prompt: str, history: list[Message], budget: int, cut: bool = True, tools=()
    ) -> Prompt:
        return self.in_thread(lambda: self.builder(model_id).build(system_prompt, history, budget, cut, tools))

    def build_raw(self, model_id: str, text: str, budget: int) -> Prompt:
        """The text as the prompt, without a template (PromptBuilder.raw)."""
        return self.in_thread(lambda: self.builder(model_id).raw(text, budget))

    def with_sources(self, model_id: str, prompt: Prompt, sources: str, layout: str) -> Prompt:
        return self.in_thread(lambda: self.builder(model_id).with_sources(prompt, sources, layout))

    def check_grammar(self, model_id: str, grammar: str) -> None:
        """UnsupportedSchema when llama.cpp cannot parse the grammar against the model's vocabulary."""
        if not self.in_thread(lambda: self.builder(model_id).model.grammar_parses(grammar)):
            raise UnsupportedSchema("llama.cpp cannot parse the grammar made of it")

    def count_tokens(self, model_id: str, texts: list[str]) -> list[int]:
        """Token counts of texts, tokenized in another thread (see in_thread)."""
        return self.in_thread(lambda: [len(self.builder(model_id).model.tokenize(t)) for t in texts])

    def in_thread(self, function):
        """Prompts are tokenized in another real thread (llama.cpp's tokenizer is safe beside decoding):
        a long history must not stall the hub, and greenlets never call llama.cpp themselves."""
        return gevent.get_hub().threadpool.apply(function)

    def builder(self, model_id: str) -> PromptBuilder:
        """The model's prompt builder (in a thread of the hub's pool: making one reads the model's vocabulary)."""
        entry = self.catalog.get(model_id)
        if entry is None:
            raise UnknownModel(model_id)
        with self.builders_lock:
            known = self.builders.get(model_id)
            if known is not None and known[0] == entry:
                self.builders.move_to_end(model_id)
                return known[1]
            path = default_model_path(self.settings.model_cache) if entry.source == "bundled" else entry.path
            try:
                builder = PromptBuilder(Vocabulary(path))
            except NotGGUF as exc:  # its load would fail the same way: its replies fail at once, later ones get 503
                self.failures[model_id] = (entry, str(exc))
                raise
            self.builders[model_id] = (entry, builder)
            while len(self.builders) > max(BUILDERS_KEPT, self.settings.models_loaded):
                self.builders.popitem(last=False)
            return builder

    def read_ahead(self, reply: Reply, prompt: Prompt, busy: bool) -> None:
        """Have the model read the prompt up to where the sources go into the chat's cache now, unless
        replies are waiting for the model (`busy`: then it has no time to spare) or it is not loaded."""
        loaded = self.models.get(reply.model)
        if self.settings.sources_layout == "system" or busy or prompt.head < 2 or not self.is_loaded(reply.model):
            return
        ahead = Prompt(prompt.tokens[: prompt.head], prompt.stop, prompt.truncated)
        reply.reading_ahead = Job(reply.chat_id, ahead, reply.job.options, on_text=len, read_only=True)
        loaded.read_ahead(reply.reading_ahead)

    # Chats' states on disk (kv_files.py)

    def keep_state(self, reply: Reply, request: ReplyRequest, text: str, job: Job) -> None:
        """After a chat's reply was saved (before it leaves the running ones): have its model save the chat's state,
        up to where the chat's next prompt goes on from it (the history with this reply, as the next turn renders it),
        built in a greenlet of its own. The model is not unloaded meanwhile (_unload_idle)."""
        loaded = self.models.get(reply.model)
        if not self.kv.enabled or request.by_prefix or loaded is None or loaded.status != "ok":
            return
        self.keeping[loaded.id] += 1
        gevent.spawn(self._keep_state, loaded, reply, request, text, job)

    def _keep_state(self, loaded: LoadedModel, reply: Reply, request: ReplyRequest, text: str, job: Job) -> None:
        history = [*request.history, Message("Assistant", text)]
        budget = self.context_window(reply.model) - request.options.max_tokens
        try:
            prefix = self.build(reply.model, request.system_prompt, history, budget, request.cut)
            loaded.save(reply.chat_id, prefix.tokens, job)
        except Exception:  # too long now, a model removed: nothing to save
            log.debug("no state saved for chat %s", reply.chat_id, exc_info=True)
        finally:
            self.keeping[loaded.id] -= 1
            if not self.keeping[loaded.id]:
                del self.keeping[loaded.id]
                self.on_ready()  # a model waiting to be unloaded may go now

    def forget_chat(self, chat_id) -> None:
        """The chat was deleted: its saved states go (in the hub's threadpool: a few file deletions)."""
        self.in_thread(lambda: self.kv.remove(chat_id))

    # Which replies run, and where

    def admissible(self, waiting: deque[Reply], running: list[Reply]) -> list[Reply]:
        """The waiting replies that start now, in order (see the class's docstring); loads and unloads models as the
        oldest waiting reply needs."""
        counts = Counter(reply.model for reply in running)
        self._unload_idle(counts)
        starting = []
        for reply in waiting:
            loaded = self.models.get(reply.model)
            if reply.model in self.failures:
                starting.append(reply)  # `generate` ends it with the reason
            elif (
                loaded is not None
                and loaded.status == "ok"
                and loaded is not self.giving_way
                and not self.stale(loaded)
                and counts[reply.model] < self.settings.parallel
            ):
                starting.append(reply)
                counts[reply.model] += 1
        # Models for the replies that wait: loaded while there is room; when there is none, the oldest waiting reply's
        # has another model give way to it (never a later one's: that would pass the oldest).
        oldest = next((reply for reply in waiting if reply not in starting), None)
        for reply in waiting:
            if reply.model in self.models or reply.model in self.failures or reply in starting:
                continue
            if len(self.models) < self.settings.models_loaded:
                self._load(reply.model)
            elif reply is oldest:
                self._make_room(reply.model, counts)
        return starting

    def _make_room(self, model_id: str, counts: Counter) -> None:
        """Have the least recently used model give way to this one (one at a time)."""
        if self.giving_way is not None:
            return
        loaded = [m for m in self.models.values() if m.status == "ok"]
        if not loaded:
            return  # every place is taken by a model still loading or unloading: its end calls on_ready
        self.giving_way = min(loaded, key=lambda m: (counts[m.id] > 0, m.last_used))
        self.wanted = model_id
        log.info("the model %s gives way to %s", self.giving_way.id, model_id)
        self._unload_idle(counts)

    def _unload_idle(self, counts: Counter) -> None:
        """Unload the model giving way, and stale ones, once no reply runs on them."""
        for loaded in list(self.models.values()):
            leaving = loaded is self.giving_way or self.stale(loaded)
            if leaving and loaded.status == "ok" and counts[loaded.id] == 0 and not self.keeping[loaded.id]:
                loaded.unload()

    def stale(self, loaded: LoadedModel) -> bool:
        """Whether the catalog has the loaded model no more, or a pulled one under its id that is another: it was
        removed (here, or by another process) or pulled again. It takes no more replies, and is unloaded once idle."""
        current = self.catalog.get(loaded.id)
        return current is None or (current.source == "hub" and current != loaded.entry)

    def _load(self, model_id: str) -> None:
        entry = self.catalog.get(model_id)
        if entry is None:
            self.failures[model_id] = (None, f"the model {model_id} was removed")
            gevent.spawn(self.on_ready)
            return
        self.failures.pop(model_id, None)
        self.models[model_id] = loaded = LoadedModel(entry, self)
        loaded.start()

    def load_ended(self, loaded: LoadedModel) -> None:
        """In the event loop: a model loaded, or failed to (its replies waiting end with the reason)."""
        if loaded.error is not None:
            del self.models[loaded.id]
            self.failures[loaded.id] = (loaded.entry, loaded.error)
        else:
            self.ever_loaded.add(loaded.id)
            log.info("the model %s loaded in %.2f s", loaded.id, loaded.load_seconds)
        if self.on_model_change is not None:  # its status may be "unloading" already: a model gave way at once
            self.on_model_change(loaded.id, "failed" if loaded.error else "ok", loaded.load_seconds)
        self.on_ready()

    def unloaded(self, loaded: LoadedModel) -> None:
        """In the event loop: a model's thread let go of it; the model it gave way to is loaded."""
        del self.models[loaded.id]
        loaded.status = "unloaded"
        log.info("the model %s was unloaded", loaded.id)
        if self.on_model_change is not None:
            self.on_model_change(loaded.id, loaded.status, loaded.load_seconds)
        if loaded is self.giving_way:
            wanted, self.giving_way, self.wanted = self.wanted, None, None
            if wanted not in self.models:
                self._load(wanted)
        self.on_ready()

    def forget_model(self, model_id: str) -> None:
        """The model was removed from the catalog: unloaded once its running replies end; replies that wait for it
        end with an error."""
        with self.builders_lock:
            self.builders.pop(model_id, None)
        self.failures[model_id] = (None, f"the model {model_id} was removed")
        self.on_ready()

    # Generating

    def generate(self, reply: Reply) -> None:
        """Hand a reply to its model's thread; its text comes back step by step. A reply whose model failed to
        load, or was removed, ends with the reason."""
        loaded = self.models.get(reply.model)
        if loaded is None or loaded.status != "ok" or reply.model in self.failures:
            failure = self.failures.get(reply.model)
            why = failure[1] if failure and failure[0] is None else f"the model {reply.model} failed to load"
            gevent.spawn(self.on_failure, reply, 409 if failure and failure[0] is None else 503, why)
            return
        loaded.generate(reply)

    def cancel(self, reply: Reply) -> None:
        """Nothing more to do: the engine reads the job's `cancelled` flag between tokens."""

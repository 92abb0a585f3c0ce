"""The local backend: the GGUF models in this process, each loaded one owned by one real OS thread that runs its
engine's steps back to back (continuous batching), and the prompts built with each model's tokenizer.

Models load when a reply needs one (the default model as the server starts). At most CHATAPI_MODELS_LOADED stay in
memory; `admissible` decides which waiting replies start, and when a model must give way to another (see there).
"""

import _queue  # the C SimpleQueue: gevent's monkey-patching leaves it a real thread-blocking queue
import _thread  # its locks: gevent's monkey-patching leaves them real thread locks
import logging
import os
import threading
import time
from collections import Counter, OrderedDict, deque

import gevent
from gevent.threadpool import ThreadPool

from .catalog import Catalog, ModelEntry, UnknownModel
from .engine import Engine, Job, Result
from .model import Model, Vocabulary, default_model_path
from .prompt import Message, Prompt, PromptBuilder
from .reply import OnEnd, OnFailure, Reply

BUILDERS_KEPT = 4  # prompt builders (tokenizers) kept, of the models replies were last built for
log = logging.getLogger(__name__)


class Threads:
    """The model's thread count: one fewer while other work needs a core, as llama.cpp's threads spin at their
    barriers while one of them waits for a core (see docs/benchmarks.md, "Threads"). Every WINDOW the model's
    thread reads the CPU the rest of the machine used and runs one fewer while that is over OTHERS_LIMIT of a core."""

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


class Turns:
    """The loaded models' threads take turns at engine steps, in the order they ask: one step at a time on the
    machine's cores (two models' threads at once would each wait at the other's barriers), and no model's replies
    wait for another's more than one step."""

    def __init__(self):
        self._lock = _thread.allocate_lock()
        self._waiting: deque = deque()
        self._busy = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._busy:
                self._busy = True
                return
            turn = _thread.allocate_lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the step before this one: the turn is handed over, and _busy stays

    def __exit__(self, *_exc) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._busy = False


class LoadedModel:
    """One model in memory: the real OS thread that loads it and then runs its engine's steps back to back
    (continuous batching), and the replies handed to it. Status: loading, ok, failed, unloading."""

    def __init__(self, entry: ModelEntry, backend: "LocalBackend"):
        self.entry = entry
        self.id = entry.id
        self.backend = backend
        self.pool = ThreadPool(1)  # the one real OS thread that owns the model
        self.status = "loading"
        self.error: str | None = None
        self.model: Model | None = None
        self.engine: Engine | None = None
        self.load_seconds: float | None = None
        self.last_used = time.monotonic()
        self.generating: dict[int, Reply] = {}  # by id() of their job: the replies handed to the model's thread
        self._admitted: _queue.SimpleQueue = _queue.SimpleQueue()  # jobs handed to the model's thread; None: unload
        self._step_texts: list[tuple[Reply, str]] = []  # the model's thread's own: text of the current step

    def start(self) -> None:
        self.pool.spawn(self._load)

    def _load(self) -> None:
        """Runs in the model's thread, then stays there running steps until it is unloaded; plain attribute
        writes, and one callback to the event loop when the load is over."""
        backend = self.backend
        s = backend.settings
        started = time.monotonic()
        try:
            path = default_model_path(s.model_cache) if self.entry.source == "bundled" else self.entry.path
            self.model = Model(path, backend.context_window(self.id), s.n_threads, s.kv_chats)
            self.engine = Engine(self.model, s.step_tokens)
            self.load_seconds = time.monotonic() - started
            self.status = "ok"
        except Exception as exc:
            log.exception("the model %s could not be loaded", self.id)
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"  # for /health's details only
        backend.hub.loop.run_callback_threadsafe(backend.load_ended, self)
        if self.status == "ok":
            self._run_steps()

    def generate(self, reply: Reply) -> None:
        """Hand a reply to the model's thread; its text comes back step by step."""
        reply.job.on_text = lambda text: self._step_texts.append((reply, text))
        self.generating[id(reply.job)] = reply
        self.last_used = time.monotonic()
        self._admitted.put(reply.job)

    def read_ahead(self, job: Job) -> None:
        self._admitted.put(job)

    def unload(self) -> None:
        """Free the model once its thread is between steps (no reply runs on it: the backend waits for that)."""
        self.status = "unloading"
        self._admitted.put(None)

    def _run_steps(self) -> None:
        """The model's thread while the model is loaded: engine steps back to back while replies run, asleep while
        none do. The steps never wait for the server's event loop, however busy it is with requests: after each
        one, a single callback hands the loop the step's text and the replies that ended."""
        engine, backend = self.engine, self.backend
        threads = Threads(self.model, backend.settings.n_threads, backend.loop_thread)
        while True:
            threads.adjust(time.monotonic())
            new = [] if engine.slots else [self._admitted.get()]
            while not self._admitted.empty():
                new.append(self._admitted.get())
            if None in new:  # unload: only read-ahead jobs can be left, which end unreported
                break
            try:
                with backend.turns:
                    ended, error = engine.step(new), None
            except Exception as exc:  # not a job's tokens (those end that job alone): the engine dropped every job
                log.exception("generation failed")
                ended, error = [], exc
            texts, self._step_texts = self._step_texts, []
            if texts or ended or error:
                backend.hub.loop.run_callback_threadsafe(self._after_step, texts, ended, error)
        self.engine = None
        self.model.close()
        self.model = None
        backend.hub.loop.run_callback_threadsafe(backend.unloaded, self)

    def _after_step(self, texts: list[tuple[Reply, str]], ended: list[tuple[Job, Result]], error) -> None:
        """In the event loop: publish a step's text, then report the replies it ended or that failed: those whose
        tokens the model could not read, or every one when the step itself failed (`error`)."""
        for reply, text in texts:
            reply.add_text(text)
        if error is not None:
            failed, self.generating = list(self.generating.values()), {}
            for reply in failed:
                self.backend.on_failure(reply, 500, "generation failed")  # why: in the log (_run_steps)
        for job, result in ended:
            reply = self.generating.pop(id(job))
            self.last_used = time.monotonic()
            if result.error is not None:
                self.backend.on_failure(reply, 500, f"generation failed: {result.error}")
            else:
                self.backend.on_end(reply, result)


class LocalBackend:
    """The models of this process. The service hands it prepared replies (`generate`); it reports, in the event
    loop, each reply's text (to the reply), its end (`on_end`) or a failed step (`on_failure`), and when replies
    that wait may start (`on_ready`, after a model loaded or gave way).

    Which waiting replies start (`admissible`): in the order they came, each as soon as its model is loaded and has
    a place (CHATAPI_PARALLEL replies per model). A reply whose model is not loaded may be passed by later ones
    whose model is, but never waits on them: when the oldest waiting reply's model is not loaded and
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
        self.removed: set[str] = set()  # removed from the catalog while loaded: unloaded once idle
        self.turns = Turns()
        self.on_model_change = None  # the app's metrics: told of each model loaded, failed or unloaded
        self.hub = None  # the server's event loop, which the models' threads report to
        self.loop_thread = 0  # its native thread id
        # Prompt builders by model id, each with its model's tokenizer (a Vocabulary, loaded without weights).
        self.builders: OrderedDict[str, tuple[ModelEntry, PromptBuilder]] = OrderedDict()
        self.builders_lock = _thread.allocate_lock()  # the builders are made in the hub's threadpool

    def load(self) -> None:
        """Load the default model, once (the server calls this as its worker starts)."""
        if self.hub is None:
            self.hub = gevent.get_hub()
            self.loop_thread = threading.get_native_id()
            self._load(self.catalog.default_id())

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

    def build(self, model_id: str, system_prompt: str, history: list[Message], budget: int, cut: bool = True) -> Prompt:
        return self.in_thread(lambda: self.builder(model_id).build(system_prompt, history, budget, cut))

    def with_sources(self, model_id: str, prompt: Prompt, sources: str, layout: str) -> Prompt:
        return self.in_thread(lambda: self.builder(model_id).with_sources(prompt, sources, layout))

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
            builder = PromptBuilder(Vocabulary(path))
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
                and reply.model not in self.removed
                and counts[reply.model] < self.settings.parallel
            ):
                starting.append(reply)
                counts[reply.model] += 1
        oldest = next((reply for reply in waiting if reply not in starting), None)
        if oldest is not None and oldest.model not in self.models:
            self._make_room(oldest.model, counts)
        return starting

    def _make_room(self, model_id: str, counts: Counter) -> None:
        """Load the model, or have the least recently used one give way to it (one at a time)."""
        if self.giving_way is not None:
            return
        if len(self.models) < self.settings.models_loaded:
            return self._load(model_id)
        loaded = [m for m in self.models.values() if m.status == "ok"]
        if not loaded:
            return  # every place is taken by a model still loading or unloading: its end calls on_ready
        self.giving_way = min(loaded, key=lambda m: (counts[m.id] > 0, m.last_used))
        self.wanted = model_id
        log.info("the model %s gives way to %s", self.giving_way.id, model_id)
        self._unload_idle(counts)

    def _unload_idle(self, counts: Counter) -> None:
        """Unload the model giving way, and removed ones, once no reply runs on them."""
        for loaded in list(self.models.values()):
            leaving = loaded is self.giving_way or loaded.id in self.removed
            if leaving and loaded.status == "ok" and counts[loaded.id] == 0:
                loaded.unload()

    def _load(self, model_id: str) -> None:
        entry = self.catalog.get(model_id)
        if entry is None:
            self.failures[model_id] = (None, f"the model {model_id} was removed")
            gevent.spawn(self.on_ready)
            return
        self.failures.pop(model_id, None)
        self.removed.discard(model_id)
        self.models[model_id] = loaded = LoadedModel(entry, self)
        loaded.start()

    def load_ended(self, loaded: LoadedModel) -> None:
        """In the event loop: a model loaded, or failed to (its replies waiting end with the reason)."""
        if loaded.status == "failed":
            del self.models[loaded.id]
            self.failures[loaded.id] = (loaded.entry, loaded.error)
            loaded.pool.kill()
        else:
            self.ever_loaded.add(loaded.id)
            log.info("the model %s loaded in %.2f s", loaded.id, loaded.load_seconds)
        if self.on_model_change is not None:
            self.on_model_change(loaded.id, loaded.status, loaded.load_seconds)
        self.on_ready()

    def unloaded(self, loaded: LoadedModel) -> None:
        """In the event loop: a model's thread let go of it; the model it gave way to is loaded."""
        del self.models[loaded.id]
        loaded.status = "unloaded"
        loaded.pool.kill()
        self.removed.discard(loaded.id)
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
        if model_id in self.models:
            self.removed.add(model_id)
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

"""One local model in memory: the real OS thread that loads it, then runs its engine's steps back to back
(continuous batching), the count of threads llama.cpp uses, and the turns that loaded models take at steps.
LocalBackend (local.py) decides which models are loaded and which replies go to each.
"""

import _queue  # the C SimpleQueue: gevent's monkey-patching leaves it a real thread-blocking queue
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass

import gevent
import llama_cpp
from gevent import monkey

from .catalog import ModelEntry
from .engine import Engine, Job, Result
from .kv_files import Identity, model_key
from .model import Model, default_model_path
from .reply import Reply

# Real threads and locks, whether or not gevent has patched the `_thread` module (the server's worker has): the models'
# threads block on these, outside any event loop.
start_thread = monkey.get_original("_thread", "start_new_thread")
real_lock = monkey.get_original("_thread", "allocate_lock")
log = logging.getLogger(__name__)


class Threads:
    """The model's thread count: one fewer while other work needs a core, as llama.cpp's threads spin at their
    barriers while one of them waits for a core (see docs/benchmarks.md, "Threads"). Every WINDOW the model's
    thread reads the CPU the rest of the machine used and runs one fewer while that is over OTHERS_LIMIT of a core."""

    WINDOW = 0.1  # seconds between two readings
    OTHERS_LIMIT = 0.5  # cores of other work from which the model leaves one to it
    # Seconds after which the last reading spans the model's idle time (a step takes 0.6 s at most): what ran
    # meanwhile says nothing of now. Averaged in, a benchmark's llama-server replies between ours made our next
    # step run on one thread: 4 short prompts read together took 470 ms against 250 (the first of 4 at once, 1.5x
    # llama-server's). So all threads again, from a new reading.
    STALE = 1.0

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
        if self.last and now - self.last[0] > self.STALE:
            self.set(self.full)
        elif self.last:
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
        self._lock = real_lock()
        self._waiting: deque = deque()
        self._busy = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._busy:
                self._busy = True
                return
            turn = real_lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the step before this one: the turn is handed over, and _busy stays

    def __exit__(self, *_exc) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._busy = False


@dataclass
class SaveOrder:
    """Save a chat's state (kv_files.py) up to where its next prompt goes on from it (Engine.save)."""

    chat_id: uuid.UUID
    prefix: list[int]
    job: Job  # the reply's, whose end left the state


class LoadedModel:
    """One model in memory: the real OS thread that loads it and then runs its engine's steps back to back
    (continuous batching), and the replies handed to it. Status: loading, ok, failed, unloading."""

    def __init__(self, entry: ModelEntry, backend):  # backend: the LocalBackend that loaded it (local.py)
        self.entry = entry
        self.id = entry.id
        self.backend = backend
        self.status = "loading"
        self.error: str | None = None
        self.model: Model | None = None
        self.engine: Engine | None = None
        self.load_seconds: float | None = None
        self.last_used = time.monotonic()
        self.generating: dict[int, Reply] = {}  # by id() of their job: the replies handed to the model's thread
        self.identity: Identity | None = None  # what its chats' saved states are made under, once loaded
        # Jobs and SaveOrders handed to the model's thread; None: unload.
        self._admitted: _queue.SimpleQueue = _queue.SimpleQueue()
        self._step_texts: list[tuple[Reply, str]] = []  # the model's thread's own: text of the current step

    def start(self) -> None:
        """The model's own real OS thread: it loads the model, runs its steps, and ends once it is unloaded."""
        start_thread(self._load, ())

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
            key = model_key(self.entry, str(path))
            model = self.model
            self.identity = Identity(key, model.n_ctx, model.sequences, model.n_swa, llama_cpp.__version__)
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
        self._admit(reply.job)

    def read_ahead(self, job: Job) -> None:
        self._admit(job)

    def _admit(self, job: Job) -> None:
        """Hand a job to the model's thread, after reading its chat's saved state if it has one to use."""
        if self._may_restore(job):
            gevent.spawn(self._restore_then_admit, job)
        else:
            self._admitted.put(job)

    def _may_restore(self, job: Job) -> bool:
        """Whether the chat has a saved state to read: it has a file and no sequence in memory (as far as the event
        loop can see the model's thread: a sequence taken meanwhile costs only a needless read). A new chat's reply
        does not wait for a thread of the pool to find no file."""
        kv = self.backend.kv
        if not kv.enabled or job.by_prefix or any(s.chat_id == job.chat_id for s in self.engine.sequences):
            return False
        return kv.path(self.identity, job.chat_id).exists()

    def _restore_then_admit(self, job: Job) -> None:
        """Read the chat's saved state (in the hub's threadpool: tens of MB from disk), then hand the job over."""
        try:
            job.restore = self.backend.hub.threadpool.apply(
                self.backend.kv.read, (self.identity, job.chat_id, job.prompt.tokens)
            )
        except Exception:  # the prompt is read cold
            log.exception("the saved state of chat %s could not be read", job.chat_id)
        self._admitted.put(job)

    def save(self, chat_id: uuid.UUID, prefix: list[int], job: Job) -> None:
        """Have the model's thread save the chat's state as `job` left it (Engine.save says when)."""
        self._admitted.put(SaveOrder(chat_id, prefix, job))

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
            if not engine.slots and engine.unsaved and self._admitted.empty():
                engine.save_next()  # idle: one state at a time, so that a job that comes waits for one copy at most
                self._hand_saved_states()
                continue
            new = [] if engine.slots else [self._admitted.get()]
            threads.adjust(time.monotonic())  # after any wait: the step that follows runs on the count read now
            while not self._admitted.empty():
                new.append(self._admitted.get())
            for order in [order for order in new if isinstance(order, SaveOrder)]:
                new.remove(order)
                engine.save(order.chat_id, order.prefix, order.job)
            if None in new:  # unload: only read-ahead jobs can be left, which end unreported
                break
            if new or engine.slots:
                self._step(new)
            self._hand_saved_states()
        while engine.unsaved:  # unloaded: what is in memory goes to disk
            engine.save_next()
        self._hand_saved_states()
        self.engine = None
        self.model.close()
        self.model = None
        backend.hub.loop.run_callback_threadsafe(backend.unloaded, self)

    def _step(self, new: list[Job]) -> None:
        """One engine step, and a single callback that hands the event loop its text and the replies that ended."""
        try:
            with self.backend.turns:
                ended, error = self.engine.step(new), None
        except Exception as exc:  # not a job's tokens (those end that job alone): the engine dropped every job
            log.exception("generation failed")
            ended, error = [], exc
        texts, self._step_texts = self._step_texts, []
        if texts or ended or error:
            self.backend.hub.loop.run_callback_threadsafe(self._after_step, texts, ended, error)

    def _hand_saved_states(self) -> None:
        """The chats' states the engine copied out, to the writer's own thread."""
        for chat_id, tokens, state in self.engine.take_saved():
            self.backend.kv.write(self.identity, chat_id, tokens, state)

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

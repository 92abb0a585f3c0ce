"""The local backend: the GGUF model in this process, owned by one real OS thread that runs the engine's steps
back to back (continuous batching), and the prompts built with its tokenizer."""

import _queue  # the C SimpleQueue: gevent's monkey-patching leaves it a real thread-blocking queue
import logging
import os
import threading
import time

import gevent
from gevent.threadpool import ThreadPool

from .engine import Engine, Job, Result
from .model import Model, default_model_path
from .prompt import Message, Prompt, PromptBuilder
from .reply import OnEnd, OnFailure, Reply

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


class LocalBackend:
    """The process's own model. The service hands it prepared replies (`generate`); it reports, in the event
    loop, each reply's text (to the reply), its end (`on_end`) or a failed step (`on_failure`)."""

    name = "local"

    def __init__(self, settings, on_end: OnEnd, on_failure: OnFailure):
        self.settings = settings
        self.on_end = on_end
        self.on_failure = on_failure
        self.pool = ThreadPool(1)  # the one real OS thread that owns the model
        self.status = "not loaded"
        self.error: str | None = None
        self.model: Model | None = None
        self.prompts: PromptBuilder | None = None
        self.engine: Engine | None = None
        self.hub = None  # the server's event loop, which the model's thread reports to
        self.loop_thread = 0  # its native thread id
        self.generating: dict[int, Reply] = {}  # by id() of their job: the replies handed to the model's thread
        self._admitted: _queue.SimpleQueue = _queue.SimpleQueue()  # jobs handed to the model's thread
        self._step_texts: list[tuple[Reply, str]] = []  # the model's thread's own: text of the current step

    def load(self) -> None:
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
            log.exception("the model could not be loaded")
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"  # for /health's details only
            return
        self._run_steps()

    def describe(self) -> dict:
        described = {"status": self.status}
        if self.model:
            described.update(name=self.model.name, n_ctx=self.model.n_ctx, path=self.model.path)
        if self.error:
            described["reason"] = self.error
        return described

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def model_card(self) -> dict:
        return {"id": self.model.name, "created": int(os.path.getmtime(self.model.path))}

    # Prompts

    def build(self, system_prompt: str, history: list[Message], budget: int, cut: bool = True) -> Prompt:
        return self.in_thread(self.prompts.build, system_prompt, history, budget, cut)

    def with_sources(self, prompt: Prompt, sources: str, layout: str) -> Prompt:
        return self.in_thread(self.prompts.with_sources, prompt, sources, layout)

    def in_thread(self, function, *args):
        """Prompts are tokenized in another real thread (llama.cpp's tokenizer is safe beside decoding):
        a long history must not stall the hub, and greenlets never call llama.cpp themselves."""
        return gevent.get_hub().threadpool.apply(function, args)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of texts, tokenized in another thread (see in_thread)."""
        return self.in_thread(lambda: [len(self.model.tokenize(t)) for t in texts])

    def read_ahead(self, reply: Reply, prompt: Prompt, busy: bool) -> None:
        """Have the model read the prompt up to where the sources go into the chat's cache now, unless
        replies are waiting for the model (`busy`: then it has no time to spare)."""
        if self.settings.sources_layout == "system" or busy or prompt.head < 2:
            return
        ahead = Prompt(prompt.tokens[: prompt.head], prompt.stop, prompt.truncated)
        reply.reading_ahead = Job(reply.chat_id, ahead, reply.job.options, on_text=len, read_only=True)
        self._admitted.put(reply.reading_ahead)

    # Generating

    def generate(self, reply: Reply) -> None:
        """Hand a reply to the model's thread; its text comes back step by step."""
        reply.job.on_text = lambda text: self._step_texts.append((reply, text))
        self.generating[id(reply.job)] = reply
        self._admitted.put(reply.job)

    def cancel(self, reply: Reply) -> None:
        """Nothing more to do: the engine reads the job's `cancelled` flag between tokens."""

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
            except Exception as exc:  # not a job's tokens (those end that job alone): the engine dropped every job
                log.exception("generation failed")
                ended, error = [], exc
            texts, self._step_texts = self._step_texts, []
            if texts or ended or error:
                self.hub.loop.run_callback_threadsafe(self._after_step, texts, ended, error)

    def _after_step(self, texts: list[tuple[Reply, str]], ended: list[tuple[Job, Result]], error) -> None:
        """In the event loop: publish a step's text, then report the replies it ended or that failed: those whose
        tokens the model could not read, or every one when the step itself failed (`error`)."""
        for reply, text in texts:
            reply.add_text(text)
        if error is not None:
            failed, self.generating = list(self.generating.values()), {}
            for reply in failed:
                self.on_failure(reply, 500, "generation failed")  # why: in the log (_run_steps)
        for job, result in ended:
            reply = self.generating.pop(id(job))
            if result.error is not None:
                self.on_failure(reply, 500, f"generation failed: {result.error}")
            else:
                self.on_end(reply, result)

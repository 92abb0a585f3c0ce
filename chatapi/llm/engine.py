"""The model's owner: one real OS thread runs every generation, one at a time.

Greenlets never call llama.cpp here; they hand a Job to `Engine.generate` through a one-thread
pool and get text pieces back through thread-safe callbacks. Each chat keeps its own KV-cache
sequence (up to CHATAPI_KV_CHATS chats, least recently used evicted), so a follow-up turn
evaluates only the tokens that are new since the chat's last turn.
"""

import codecs
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import Model
from .prompt import Prompt


@dataclass
class Options:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int


@dataclass
class Job:
    """One generation as the engine sees it."""

    chat_id: uuid.UUID
    prompt: Prompt | None  # set once the prompt is built
    options: Options
    on_text: Callable[[str], None]  # called from the engine thread
    cancelled: bool = False  # set from the server side; read between tokens


@dataclass
class Result:
    finish_reason: str  # stop, length or cancelled
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    started: float  # monotonic times
    first_token: float | None
    ended: float


@dataclass
class Sequence:
    """A KV-cache sequence and the tokens it holds."""

    id: int
    chat_id: uuid.UUID | None = None
    tokens: list[int] = field(default_factory=list)
    used: float = 0.0


class StopScanner:
    """Passes text on, holding back what could be the start of a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
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


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Engine:
    """Runs generations on a loaded Model. Call only from the model's own thread."""

    def __init__(self, model: Model):
        self.model = model
        self.sequences = [Sequence(id=i) for i in range(model.sequences)]

    def sequence_for(self, chat_id: uuid.UUID) -> Sequence:
        """The chat's own sequence, else the least recently used one."""
        sequence = next((s for s in self.sequences if s.chat_id == chat_id), None)
        if sequence is None:
            sequence = min(self.sequences, key=lambda s: s.used)
            sequence.chat_id = chat_id
        sequence.used = time.monotonic()
        return sequence

    def generate(self, job: Job) -> Result:
        started = time.monotonic()
        model = self.model
        prompt = job.prompt.tokens
        sequence = self.sequence_for(job.chat_id)
        # Reuse what the sequence already holds; at least one token must run to get logits.
        cached = min(common_prefix(sequence.tokens, prompt), len(prompt) - 1)
        model.forget(sequence.id, cached)
        sequence.tokens = sequence.tokens[:cached]
        try:
            model.evaluate(prompt[cached:], sequence.id, cached)
            sequence.tokens = list(prompt)
            return self._sample(job, sequence, started, cached)
        except Exception:
            model.forget(sequence.id, 0)  # its cells are in an unknown state
            sequence.tokens = []
            raise

    def _sample(self, job: Job, sequence: Sequence, started: float, cached: int) -> Result:
        model, options = self.model, job.options
        sampler = model.sampler(options.temperature, options.top_p, options.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(job.prompt.stop)
        first_token = None
        produced = 0
        finish_reason = "length"
        stop_string = False

        def emit(text: str) -> None:
            nonlocal first_token
            if text:
                first_token = first_token or time.monotonic()
                job.on_text(text)

        while produced < options.max_tokens and len(sequence.tokens) < model.n_ctx:
            if job.cancelled:
                finish_reason = "cancelled"
                break
            token = model.sample(sampler)
            produced += 1
            if model.is_end(token):
                finish_reason = "stop"
                break
            text, stop_string = scanner.feed(decoder.decode(model.piece(token)))
            emit(text)
            if stop_string:
                finish_reason = "stop"
                break
            model.evaluate([token], sequence.id, len(sequence.tokens))
            sequence.tokens.append(token)
        if not stop_string:  # text held back as a possible stop string is part of the reply after all
            emit(scanner.flush() + decoder.decode(b"", final=True))
        return Result(
            finish_reason=finish_reason,
            prompt_tokens=len(job.prompt.tokens),
            completion_tokens=produced,
            cached_tokens=cached,
            started=started,
            first_token=first_token,
            ended=time.monotonic(),
        )

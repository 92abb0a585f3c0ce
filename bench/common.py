"""What several benchmarks share, so that none imports another: the tests' live server with the API calls the
benchmarks make, the two stream readers that time every token as it arrives (the chat API's SSE events, and /v1's
chunks), the histories they ask about, llama-cpp-python's in-process baseline, a reply streamed beside what is
measured, listing latencies, the nearest-rank percentile, and the benchmarks' database on the local PostgreSQL.

Every wait is bounded (DEADLINE_SECONDS for a stream, STARTUP_SECONDS for a server) and every loop counted.
"""

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

from chatapi.llm.prompt import ROLES  # the API's role -> OpenAI's
from config import Config
from tests.support import server as live_server  # the tests' own server starter, shared rather than copied
from tests.support.chats import ENDLESS as ENDLESS_MESSAGES
from tests.support.chats import as_history
from tests.support.server import ROOT
from tests.support.sse import EventStream

STARTUP_SECONDS = 180  # the model loads in the background after the worker boots
DEADLINE_SECONDS = 120  # any one stream

# A history the bundled model answers, greedily, with "I don't know." until max_tokens runs out.
ENDLESS = as_history(ENDLESS_MESSAGES)
STREAM_TOKENS = 256
STREAM_GOAL = 0.95

# Prose for histories of about 1,500 tokens; each chat takes the exchanges in its own rotation.
EXCHANGES = [
    (
        "How did the printing press change Europe?",
        "Before Gutenberg built his press in Mainz around 1450, every book in Europe was copied by hand, "
        "usually by monks or by professional scribes working for universities. A single Bible could take a "
        "year to finish, and a library of a few hundred volumes was a sign of great wealth. Movable metal type, "
        "an oil-based ink and a press adapted from the ones used for wine and paper made it possible to print "
        "hundreds of identical pages in a day. Within fifty years there were presses in more than two hundred "
        "cities, and millions of books were in circulation. Prices fell, literacy spread beyond the clergy, and "
        "scholars in different countries could finally be sure that they were reading the same text. The press "
        "also carried pamphlets, calendars, maps and news sheets, and it helped the ideas of the Reformation "
        "travel faster than any authority could suppress them.",
    ),
    (
        "Why does bread rise?",
        "Bread rises because of gas trapped in a stretchy network of proteins. When flour is mixed with water, "
        "two proteins called glutenin and gliadin bond together into gluten, which forms thin elastic sheets as "
        "the dough is kneaded. Yeast, a single-celled fungus, feeds on the sugars released from the starch and "
        "produces carbon dioxide and a little alcohol. The gas collects in tiny bubbles that the gluten holds "
        "like balloons, so the dough slowly swells. In the oven the bubbles expand further, the alcohol "
        "evaporates, and the yeast dies once the dough passes about sixty degrees. The proteins then set and "
        "the starch gelatinises, fixing the open crumb in place, while the surface browns through the Maillard "
        "reaction and caramelisation. Sourdough works the same way, except that wild yeasts and lactic acid "
        "bacteria do the work, which is why it tastes sour and rises more slowly.",
    ),
    (
        "What causes the tides?",
        "Tides are caused mostly by the Moon's gravity, with a smaller contribution from the Sun. The Moon pulls "
        "a little harder on the side of the Earth that faces it than on the Earth's centre, and harder on the "
        "centre than on the far side. That difference stretches the oceans into two bulges, one facing the Moon "
        "and one facing away from it. As the Earth turns underneath these bulges, most coasts see two high tides "
        "and two low tides every day, about fifty minutes later each day because the Moon moves along its orbit. "
        "When the Sun and Moon line up, at new and full moon, their effects add together and produce spring "
        "tides with a large range. When they pull at right angles, at the quarter moons, the range is smaller "
        "and we get neap tides. The shape of coastlines and the depth of the sea floor can amplify the effect "
        "enormously, as in the Bay of Fundy.",
    ),
    (
        "How does a bicycle stay upright?",
        "A moving bicycle stays upright mainly because the rider, and to some extent the bicycle itself, keeps "
        "steering the wheels back underneath the centre of mass. When the bike starts to lean to the left, "
        "turning the front wheel to the left moves the contact point of the tyres under the rider again, just as "
        "you would move your hand to balance a broom. The geometry of the fork helps: the steering axis meets "
        "the ground ahead of the point where the tyre touches it, a distance called trail, so a leaning bike "
        "tends to steer itself into the lean. Gyroscopic effects of the spinning wheels contribute a little, but "
        "experiments with bikes whose gyroscopic forces were cancelled showed that they are not essential. At "
        "very low speeds the corrections are too slow to work, which is why a bicycle that is barely moving "
        "feels wobbly and why track riders must twitch the handlebars constantly to stand still.",
    ),
    (
        "How did lighthouses work before electricity?",
        "The earliest lighthouses were simply fires burning on towers or hilltops, like the famous Pharos of "
        "Alexandria, whose flame was said to be visible far out at sea. For centuries keepers burned wood, coal "
        "or candles, which gave a weak and smoky light. In the late eighteenth century the Argand oil lamp, with "
        "its hollow circular wick and glass chimney, produced a far brighter and steadier flame. Parabolic "
        "mirrors behind the lamps concentrated the light into beams. The great advance came in 1822, when "
        "Augustin Fresnel designed a lens made of concentric rings of glass prisms that bent and reflected "
        "almost all of the light into a narrow horizontal beam. Clockwork mechanisms, wound by the keeper every "
        "few hours, rotated the lens so that each lighthouse flashed in its own pattern, letting sailors "
        "identify it at night by counting the seconds between flashes.",
    ),
    (
        "Why is the sky blue?",
        "Sunlight contains every colour of the visible spectrum. As it passes through the atmosphere it meets "
        "nitrogen and oxygen molecules that are much smaller than the wavelength of light, and these scatter "
        "light in every direction in a process called Rayleigh scattering. The amount of scattering rises "
        "steeply as the wavelength gets shorter, roughly with the inverse fourth power, so blue light is "
        "scattered several times more than red. When you look at any part of the sky away from the Sun, you "
        "see this scattered light, and it is dominated by blue. Violet is scattered even more, but sunlight "
        "contains less of it and our eyes are less sensitive to it, so the overall impression is blue. At "
        "sunrise and sunset the light travels through much more air before reaching you, most of the blue is "
        "scattered out of the direct beam, and the Sun and the clouds near it look orange and red instead.",
    ),
    (
        "How do bees make honey?",
        "Worker bees collect nectar from flowers with their long tongues and store it in a special honey "
        "stomach, where enzymes begin to break its sucrose into glucose and fructose. Back at the hive they pass "
        "the nectar from mouth to mouth to younger house bees, adding more enzymes each time, and then deposit "
        "it in wax cells. Nectar is mostly water, so the bees fan it with their wings to evaporate it until it "
        "contains less than a fifth water, which is dry enough that yeasts and bacteria cannot grow in it. "
        "Finally they seal each cell with a cap of wax and keep the honey as food for the winter.",
    ),
    (
        "Why do cats purr?",
        "Cats purr by rapidly twitching the muscles of the larynx, which makes the vocal folds open and close "
        "against the air as the cat breathes in and out, producing a steady vibration of about twenty-five to "
        "one hundred and fifty cycles a second. Kittens purr while nursing and mothers purr back, so it seems to "
        "begin as a signal of contact and wellbeing. Adult cats purr when they are content, but also when they "
        "are hungry, frightened, injured or even dying, which suggests that purring is a way of asking for care "
        "or calming themselves down, rather than a simple sign of happiness.",
    ),
]
FINAL_QUESTION = "Which of these topics would you most like to learn more about, and why?"
FOLLOW_UP = "Please answer in one short sentence."
TTFT_TOKENS = 16
TTFT_GOAL = 0.15

# Listing while idle and while generating.
LIST_PATH = "/chats/?limit=20"
LIST_REQUESTS = 200
LONG_TOKENS = 2048  # the most a request may ask for (half of CHATAPI_N_CTX): ~30 s at ~60 tokens/s


def long_history(tag: str, rotation: int) -> list[tuple[str, str]]:
    """About 1,500 tokens of Human/Assistant prose, distinct from the first message on."""
    messages = []
    for i in range(len(EXCHANGES)):
        question, answer = EXCHANGES[(rotation + i) % len(EXCHANGES)]
        messages += [("Human", f"Chat {tag}. {question}" if i == 0 else question), ("Assistant", answer)]
    return [*messages, ("Human", FINAL_QUESTION)]


def model_path() -> str:
    from chatapi.llm.model import default_model_path

    return str(os.environ.get("CHATAPI_MODEL_PATH") or default_model_path(ROOT / "instance" / "models"))


def prompt_text(history: list[tuple[str, str]], system_prompt: str | None = None) -> str:
    """The prompt the server builds for this history (the bundled GGUF has no chat template: a transcript), with
    the server's system prompt unless another is given."""
    from chatapi.llm.prompt import Message, render_transcript

    system = Config.CHATAPI_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return render_transcript(system, [Message(role, text) for role, text in history])


# The in-process baseline


def raw_rates(path: str, prompt: str, runs: int) -> tuple[list[float], int]:
    """Tokens per second of llama-cpp-python's Llama, first token to last; one warm-up run first."""
    import llama_cpp

    from chatapi.llm.model import _silence_llama_log

    _silence_llama_log()  # as the server does: llama.cpp's notes on stderr, errors only
    # The same thread count as the server's, so that the ratio measures serving, not threads.
    llm = llama_cpp.Llama(path, n_ctx=4096, n_threads=Config.CHATAPI_N_THREADS, verbose=False)
    try:
        prompt_tokens = len(llm.tokenize(prompt.encode("utf-8")))
        rates = []
        for _ in range(1 + runs):
            llm.reset()
            times = []
            for chunk in llm.create_completion(prompt, max_tokens=STREAM_TOKENS, temperature=0, stream=True):
                if chunk["choices"][0]["text"]:  # the last chunk only carries finish_reason
                    times.append(time.perf_counter())
            if len(times) < STREAM_TOKENS * 0.9:
                raise RuntimeError(f"the baseline produced {len(times)} tokens, not {STREAM_TOKENS}")
            rates.append((len(times) - 1) / (times[-1] - times[0]))
        return rates[1:], prompt_tokens
    finally:
        llm.close()


# The server


class Server(live_server.Server):
    """The tests' live server (tests/support/server.py) on a fresh SQLite database, with the API calls
    the benchmarks make, and the error lines of its log once stopped."""

    def __init__(self, workdir: Path, model: str, **settings: str):
        database_url = f"sqlite:///{workdir}/bench.db"
        live_server.migrate(database_url)
        super().__init__(database_url, workdir / "gunicorn.log", CHATAPI_MODEL_PATH=model, **settings)
        self.http = requests.Session()
        self.problems: list[str] = []  # error lines of its log, read when it stops

    def __enter__(self) -> "Server":
        self.wait_until_up(seconds=STARTUP_SECONDS)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.http.close()
        super().stop()
        lines = self.output().splitlines()
        self.problems = [line for line in lines if any(w in line for w in ("Traceback", "[ERROR]", "[CRITICAL]"))]

    # The API

    def new_chat(self, history: list[tuple[str, str]]) -> str:
        response = self.http.post(f"{self.url}/chats/create", json={"name": "bench"}, timeout=10)
        response.raise_for_status()
        chat_id = response.json()["id"]
        for role, message in history:
            self.add(chat_id, role, message)
        return chat_id

    def add(self, chat_id: str, role: str, message: str) -> None:
        body = {"chat_id": chat_id, "role": role, "message": message}
        self.http.post(f"{self.url}/conversations/create", json=body, timeout=10).raise_for_status()

    def infer_url(self, chat_id: str, max_tokens: int) -> str:
        return f"{self.url}/conversations/inference/{chat_id}?max_tokens={max_tokens}&temperature=0"

    def stop_generation(self, chat_id: str) -> None:
        self.http.post(f"{self.url}/conversations/stop/{chat_id}", timeout=10).raise_for_status()


@dataclass
class Reply:
    """One streamed reply as the client saw it (perf_counter times)."""

    sent: float
    tokens: list[float] = field(default_factory=list)  # arrival of each token event
    done_at: float | None = None
    done: dict | None = None
    named: dict[str, tuple[float, dict]] = field(default_factory=dict)  # the first event of each other kind: time, data

    @property
    def ttft(self) -> float:
        return self.tokens[0] - self.sent

    @property
    def rate(self) -> float:
        """Tokens per second from the first token event to the done event."""
        return (len(self.tokens) - 1) / (self.done_at - self.tokens[0])


def stream(url: str, on_token=None, allow_empty: bool = False) -> Reply:
    """Read one reply to its end (done, or error: raised), timing each token event as it arrives. A reply
    without tokens is an error unless allow_empty (a model may stop at once)."""
    reply = Reply(sent=time.perf_counter())
    deadline = time.monotonic() + DEADLINE_SECONDS
    events = EventStream(url, timeout=30)
    try:
        if events.response.status_code != 200:
            raise RuntimeError(f"{url}: {events.response.status_code} {events.response.text}")
        for event in events:
            at = time.perf_counter()
            if event["event"] == "message":
                reply.tokens.append(at)
                if on_token:
                    on_token(len(reply.tokens))
            elif event["event"] == "done":
                reply.done_at, reply.done = at, event["data"]
                break
            elif event["event"] == "error":
                raise RuntimeError(f"{url}: {event['data']}")
            else:
                reply.named.setdefault(event["event"], (at, event["data"]))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still streaming after {DEADLINE_SECONDS} s")
    finally:
        events.close()
    if reply.done is None:
        raise RuntimeError(f"{url} ended without done")
    if not reply.tokens and not allow_empty:
        raise RuntimeError(f"{url} ended without tokens: {reply.done}")
    return reply


class ReplyBeside:
    """A reply streamed in a thread of this process while the caller measures something beside it: ready once it
    has sent `started_after` token events; `stop()` stops it (POST /conversations/stop) and returns it."""

    def __init__(self, server: Server, chat_id: str, max_tokens: int, started_after: int = 1):
        self.server, self.chat_id = server, chat_id
        self.outcome: dict = {}
        started = threading.Event()

        def on_token(count: int) -> None:
            if count >= started_after:
                started.set()

        def listen() -> None:
            try:
                self.outcome["reply"] = stream(server.infer_url(chat_id, max_tokens), on_token=on_token)
            except BaseException as exc:  # reported by the main thread
                self.outcome["error"] = exc
            finally:
                started.set()

        self.listener = threading.Thread(target=listen, daemon=True)
        self.listener.start()
        if not started.wait(DEADLINE_SECONDS) or "error" in self.outcome:
            raise RuntimeError(f"the reply beside did not start: {self.outcome.get('error')}")

    def stop(self) -> Reply:
        self.server.stop_generation(self.chat_id)
        self.listener.join(DEADLINE_SECONDS)
        if self.listener.is_alive():
            raise RuntimeError("the reply beside did not end after POST /conversations/stop")
        if "error" in self.outcome:
            raise RuntimeError(f"the reply beside failed: {self.outcome['error']}")
        return self.outcome["reply"]


# Listing chats


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, p from 0 to 100; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def list_latencies(server: Server, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = server.http.get(server.url + LIST_PATH, timeout=10)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {LIST_PATH}: {response.status_code}")
    return times


def latencies_during_generation(server: Server, requests: int = LIST_REQUESTS) -> tuple[list[float], dict]:
    """Listings while a long reply streams to another connection (a thread of this process)."""
    beside = ReplyBeside(server, server.new_chat(ENDLESS), LONG_TOKENS)
    started = time.perf_counter()
    times = list_latencies(server, requests)
    ended = time.perf_counter()
    reply = beside.stop()
    inside = [t for t in reply.tokens if started <= t <= ended]
    info = {
        "finish_reason": reply.done["finish_reason"],  # "cancelled": it was still running at the end
        "tokens_per_second": len(inside) / (ended - started),
    }
    return times, info


# /v1


def as_messages(history: list[tuple[str, str]]) -> list[dict]:
    """A chat's history as OpenAI's messages, through the app's one role table."""
    return [{"role": ROLES[role], "content": text} for role, text in history]


def completion_stream(
    base: str, messages: list[dict], max_tokens: int, text_needed: bool = True, **more: object
) -> Reply:
    """One streamed completion read to [DONE], timing each content chunk as it arrives; `done` holds the text,
    the finish reason and the usage (asked with stream_options.include_usage; None from a server without it).
    `more`: other parameters of the request (response_format, ...)."""
    body = more | {
        "model": "gemma-3-270m",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reply = Reply(sent=time.perf_counter())
    deadline = time.monotonic() + DEADLINE_SECONDS
    finish_reason, usage, pieces = None, None, []
    with requests.post(f"{base}/v1/chat/completions", json=body, stream=True, timeout=30) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{base}: {response.status_code} {response.text}")
        pending = ""
        for data in response.iter_content(chunk_size=None):
            at = time.perf_counter()
            pending += data.decode("utf-8")
            *events, pending = pending.replace("\r\n", "\n").split("\n\n")
            for event in events:
                if not event.startswith("data: "):
                    continue  # a comment (ping)
                if event == "data: [DONE]":
                    reply.done_at = at
                    reply.done = {"text": "".join(pieces), "finish_reason": finish_reason, "usage": usage}
                    break
                chunk = json.loads(event[len("data: ") :])
                if "error" in chunk:
                    raise RuntimeError(f"{base}: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        reply.tokens.append(at)
                        pieces.append(choice["delta"]["content"])
                    finish_reason = choice.get("finish_reason") or finish_reason
            if reply.done is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base} still streaming after {DEADLINE_SECONDS} s")
    if reply.done is None or (text_needed and not reply.tokens):
        raise RuntimeError(f"{base}: the stream ended without [DONE] or without text: {reply.done}")
    return reply


# The benchmarks' database on the local PostgreSQL

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url(name: str = "chatapi_bench") -> tuple[str | None, str]:
    """A benchmark's database on the local PostgreSQL (made if missing), or None and why it cannot be reached."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        return None, str(exc).strip().splitlines()[0]
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", ""


def not_measured(reason: str) -> str:
    """The warning of a table without PostgreSQL, printed in it and returned (bench/__main__.py heads it with it)."""
    warning = f"POSTGRESQL WAS NOT MEASURED ({reason}): this table is SQLite only."
    print(f"!!! {warning} !!!")
    return warning

"""Inference over HTTP: the real server (gunicorn, one gevent worker) against baselines from the same run.

1. Streaming throughput: tokens per second a client receives from GET /conversations/inference/<chat_id>,
   divided by llama-cpp-python's own Llama generating the same prompt in this process (run before the
   server starts, so that the two never share the CPUs).
2. Follow-up time to first token: a chat with a ~1,500-token history, asked once (cold), then again after a
   short Human message (warm: the chat's KV cache should hold everything but the new tokens). Ratio warm/cold,
   for one chat at a time and for three chats taking turns (the server keeps CHATAPI_KV_CHATS=6 caches).
3. GET /chats/?limit=20 while the model is idle and while it generates: p50 and p99, ratio during/idle.

Every wait is bounded (DEADLINE_SECONDS for a stream, STARTUP_SECONDS for the server) and every loop counted.
"""

import math
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from config import Config
from tests.support import server as live_server  # the tests' own server starter, shared rather than copied
from tests.support.chats import ENDLESS as ENDLESS_MESSAGES
from tests.support.chats import as_history
from tests.support.server import ROOT
from tests.support.sse import EventStream

STARTUP_SECONDS = 180  # the model loads in the background after the worker boots
DEADLINE_SECONDS = 120  # any one stream
RUNS = 3  # measured repetitions of the throughput and single-chat TTFT parts, after one warm-up

# 1. A history the bundled model answers, greedily, with "I don't know." until max_tokens runs out.
ENDLESS = as_history(ENDLESS_MESSAGES)
STREAM_TOKENS = 256
STREAM_GOAL = 0.95

# 2. Prose for histories of about 1,500 tokens; each chat takes the exchanges in its own rotation.
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

# 3. Listing while idle and while generating.
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


def prompt_text(history: list[tuple[str, str]]) -> str:
    """The prompt the server builds for this history (the bundled GGUF has no chat template: a transcript)."""
    from chatapi.llm.prompt import Message, render_transcript

    return render_transcript(Config.CHATAPI_SYSTEM_PROMPT, [Message(role, text) for role, text in history])


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


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


# The three measurements against the server


def streaming_rates(server: Server, runs: int) -> list[Reply]:
    """Fresh chats with the ENDLESS history (a reply changes its chat's history); one warm-up first."""
    replies = []
    for _ in range(1 + runs):
        reply = stream(server.infer_url(server.new_chat(ENDLESS), STREAM_TOKENS))
        if reply.done["usage"]["completion_tokens"] != STREAM_TOKENS:
            raise RuntimeError(f"the server stopped early: {reply.done}")
        replies.append(reply)
    return replies[1:]


def turns(server: Server, chat_ids: list[str]) -> tuple[list[Reply], list[Reply]]:
    """First turns of every chat, then a follow-up of each, in the same order."""
    cold = [stream(server.infer_url(chat_id, TTFT_TOKENS)) for chat_id in chat_ids]
    warm = []
    for chat_id in chat_ids:
        server.add(chat_id, "Human", FOLLOW_UP)
        warm.append(stream(server.infer_url(chat_id, TTFT_TOKENS)))
    return cold, warm


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
    chat_id = server.new_chat(ENDLESS)
    generating = threading.Event()
    outcome: dict = {}

    def listen() -> None:
        try:
            outcome["reply"] = stream(server.infer_url(chat_id, LONG_TOKENS), on_token=lambda n: generating.set())
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc
        finally:
            generating.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    if not generating.wait(DEADLINE_SECONDS) or "error" in outcome:
        raise RuntimeError(f"the long generation did not start: {outcome.get('error')}")
    started = time.perf_counter()
    times = list_latencies(server, requests)
    ended = time.perf_counter()
    server.stop_generation(chat_id)
    listener.join(DEADLINE_SECONDS)
    if listener.is_alive():
        raise RuntimeError("the long generation did not end after POST /conversations/stop")
    if "error" in outcome:
        raise RuntimeError(f"the long generation failed: {outcome['error']}")
    reply: Reply = outcome["reply"]
    inside = [t for t in reply.tokens if started <= t <= ended]
    info = {
        "finish_reason": reply.done["finish_reason"],  # "cancelled": it was still running at the end
        "tokens_per_second": len(inside) / (ended - started),
    }
    return times, info


# Reporting


def main() -> None:
    path = model_path()
    endless_prompt = prompt_text(ENDLESS)
    print(f"Inference over HTTP: gunicorn + gevent on 127.0.0.1, model {Path(path).name}, {os.cpu_count()} CPUs")

    # 1. The baseline runs alone, before the server exists.
    raw, raw_prompt_tokens = raw_rates(path, endless_prompt, RUNS)

    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir, Server(Path(workdir), path) as server:
        served = streaming_rates(server, RUNS)

        # 2. One chat at a time (RUNS chats), then three taking turns: A, B, C, then A, B, C again.
        single = [turns(server, [server.new_chat(long_history(f"S{i}", i))]) for i in range(RUNS)]
        single_cold = [cold[0] for cold, _ in single]
        single_warm = [warm[0] for _, warm in single]
        trio = [server.new_chat(long_history(tag, i + 3)) for i, tag in enumerate("ABC")]
        trio_cold, trio_warm = turns(server, trio)

        # 3. Listing, idle (after a few requests to warm up) and during a generation.
        list_latencies(server, 10)
        idle = list_latencies(server, LIST_REQUESTS)
        during, long_info = latencies_during_generation(server)

    raw_rate = statistics.median(raw)
    served_rate = statistics.median(r.rate for r in served)
    server_side = statistics.median(r.done["timings"]["tokens_per_second"] for r in served)
    single_ratio = statistics.median(w.ttft / c.ttft for c, w in zip(single_cold, single_warm, strict=True))
    trio_ratio = statistics.mean(r.ttft for r in trio_warm) / statistics.mean(r.ttft for r in trio_cold)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    def usage(replies: list[Reply], key: str) -> str:
        return "/".join(str(r.done["usage"][key]) for r in replies)

    rows = [
        (
            f"streaming tokens/s, {STREAM_TOKENS} tokens (median of {RUNS})",
            f"{raw_rate:.1f} in-process",
            f"{served_rate:.1f} over HTTP",
            served_rate / raw_rate,
            f">= {STREAM_GOAL}",
        ),
        (
            f"follow-up TTFT, one chat (median of {RUNS})",
            f"{ms(statistics.median(r.ttft for r in single_cold))} cold",
            f"{ms(statistics.median(r.ttft for r in single_warm))} warm",
            single_ratio,
            f"<= {TTFT_GOAL}",
        ),
        (
            "follow-up TTFT, 3 chats taking turns (means)",
            f"{ms(statistics.mean(r.ttft for r in trio_cold))} cold",
            f"{ms(statistics.mean(r.ttft for r in trio_warm))} warm",
            trio_ratio,
            f"<= {TTFT_GOAL}",
        ),
        (
            f"GET {LIST_PATH} p50 ({LIST_REQUESTS} requests)",
            f"{percentile(idle, 50):.1f} ms idle",
            f"{percentile(during, 50):.1f} ms generating",
            percentile(during, 50) / percentile(idle, 50),
            "",
        ),
        (
            f"GET {LIST_PATH} p99 ({LIST_REQUESTS} requests)",
            f"{percentile(idle, 99):.1f} ms idle",
            f"{percentile(during, 99):.1f} ms generating",
            percentile(during, 99) / percentile(idle, 99),
            "",
        ),
    ]
    print(f"{'measure':48} {'baseline':>17} {'server':>22} {'ratio':>7}  goal")
    for name, baseline, measured, ratio, goal in rows:
        print(f"{name:48} {baseline:>17} {measured:>22} {ratio:7.3f}  {goal}".rstrip())
    print("details:")
    print(f"  streaming runs, tokens/s: in-process {', '.join(f'{r:.1f}' for r in raw)};")
    print(f"    over HTTP {', '.join(f'{r.rate:.1f}' for r in served)} (client side), ", end="")
    print(f"{server_side:.1f} median as the server reports it (done.timings)")
    print(
        f"    prompt {raw_prompt_tokens} tokens; token events per reply {', '.join(str(len(r.tokens)) for r in served)}"
    )
    print(
        f"  one chat: prompt_tokens cold {usage(single_cold, 'prompt_tokens')}, "
        f"follow-up {usage(single_warm, 'prompt_tokens')}, cached_tokens of the follow-ups "
        f"{usage(single_warm, 'cached_tokens')} (cold {usage(single_cold, 'cached_tokens')})"
    )
    print(f"    TTFT ms cold {', '.join(ms(r.ttft)[:-3] for r in single_cold)}; warm ", end="")
    print(", ".join(ms(r.ttft)[:-3] for r in single_warm))
    print(
        f"  3 chats: prompt_tokens cold {usage(trio_cold, 'prompt_tokens')}, cached_tokens of the follow-ups "
        f"{usage(trio_warm, 'cached_tokens')}; TTFT ms cold {', '.join(ms(r.ttft)[:-3] for r in trio_cold)}, "
        f"warm {', '.join(ms(r.ttft)[:-3] for r in trio_warm)}"
    )
    print(
        f"  listing during generation: the reply streamed {long_info['tokens_per_second']:.1f} tokens/s meanwhile "
        f"and ended {long_info['finish_reason']} (cancelled = still running when the listings were done); "
        f"max ms idle {max(idle):.1f}, generating {max(during):.1f}"
    )
    print(f"  server log: {len(server.problems)} error lines", *server.problems[:5], sep="\n    ")

"""Several replies at once (continuous batching), and the model's thread count, against baselines from the same run.

1. 1, 2 and 4 replies asked together (distinct chats whose ~260-token prompts no cache holds but for the
   system prompt, max_tokens=128, temperature 0): aggregate tokens/s
   (all token events over the time from the first request to the last `done`), each client's time to first
   token. Ratios: aggregate at 4 over 1 reply alone; the worst first-token time at 4 over one reply's whole
   time alone (1.0 would mean the last client waited for a whole reply).
2. Gaps between two tokens of one reply (p99) while a ~2,000-token prompt is read beside it, over the same
   reply's gaps before that prompt arrived, for each CHATAPI_STEP_TOKENS and on llama-server; the long prompt's first
   token over llama-server's.
3. The model's threads (THREADS): one reply's tokens/s alone, and while GET /chats/?limit=20 runs back to
   back on another connection, with the listings' p50 and p99, and 4 replies together.

Every wait is bounded (the streams' deadline, the server's start-up) and every loop counted.

Run it alone: `.venv/bin/python -m bench batching` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Several replies at once" (TITLE), after NOTES, which say how each figure is taken.
"""

import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import llama_server
from bench.common import (
    ENDLESS,
    LIST_REQUESTS,
    Reply,
    ReplyBeside,
    Server,
    latencies_during_generation,
    list_latencies,
    model_path,
    percentile,
    prompt_text,
    stream,
)
from bench.llama_server import LlamaServer
from config import Config

TOKENS = 128
RUNS = 3  # measured repetitions of each concurrency, after one warm-up
CONCURRENCY = (1, 2, 4)
AGGREGATE_GOAL = 1.6  # llama.cpp's server with 4 slots on this machine: 1.57
WAIT_GOAL = 0.25
LONG_PROMPT = "Please summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 200
BESIDE_REQUESTS = 1000  # listings beside a reply: a few seconds, so that its tokens/s is more than a handful
# The model's thread settings compared, by name: the server's default last (2 threads on this machine, one
# fewer while other work needs a core), 1 thread, and 2 that sleep at llama.cpp's barriers instead of spinning.
THREADS = {
    "1 thread": {"CHATAPI_N_THREADS": "1"},
    "2, sleeping waits": {"CHATAPI_N_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "2, default": {"CHATAPI_N_THREADS": "2"},
}
STEPS = (64, 128, 256, 512)  # CHATAPI_STEP_TOKENS compared
GAP_GOAL = 3  # a running reply's p99 token gap beside a long prompt, over its own
PARALLEL = Config.CHATAPI_PARALLEL


TITLE = "Several replies at once"
NOTES = """\
The real server with its defaults (CHATAPI_PARALLEL=4: continuous batching) on a fresh SQLite database, the
model as above; every ratio against a baseline measured in the same run. llama.cpp's own `llama-server`, when
`CHATAPI_BENCH_LLAMA_SERVER` names a binary built from the llama.cpp source vendored in the pinned
llama-cpp-python sdist (outside this repository), gets the same requests: 4 slots of 4,096 tokens,
`--swa-full` (as our engine, so that a cached prefix can be reused), the same thread count, `/completion`
streamed at temperature 0, the prompt our server builds for the same history.

- **aggregate tok/s**: *n* replies asked at once from threads of the benchmark's process, distinct chats,
  `max_tokens=128`, `temperature=0`: all token events over the time from the first request to the last
  `done`; median of 3 runs after a warm-up, over the same for one reply alone. Two workloads: *new ~15 tokens*,
  the looping history with a distinct last line (another chat's cache holds all but the last ~15 tokens:
  the replies' generation is the work, which is what batching shares), and *cold ~260 tokens*, the same
  history made distinct at its start (every prompt is read whole; reading is compute-bound, so no scheduling
  makes four cold prompts faster than one after another). The goals apply to the first.
- **worst 1st token / 1 reply's time**: the slowest of the *n* clients' time to first token, over the time
  one reply alone takes from request to `done`. Replies made one after another would put this near *n* - 1.
- **token gap p99 beside a 2,000-token prompt**: the 99th percentile of the gaps between two token events of
  a running reply that overlap the reading of a ~2,000-token prompt asked beside it (from that request to its first
  token: a stall for the whole of it is one gap), over the same reply's gaps before; one server per
  `CHATAPI_STEP_TOKENS` (the chunk read per step), and llama-server (twice) on the same prompts, its running reply
  on `/completion` dropped once the long prompt is read. **2,000-token prompt's first token**: from its request,
  over llama-server's (the median of its two).
- **model threads**: one server per setting: `CHATAPI_N_THREADS=1`; 2 threads that sleep at llama.cpp's
  barriers (`OMP_WAIT_POLICY=PASSIVE`); and the default, 2 threads that spin there (OpenMP's default) with one
  fewer while the rest of the machine uses more than half a core (`Threads` in `chatapi/llm/loaded.py`; *Threads*
  below says why). One reply's tokens/s alone (`max_tokens=256`, median of 2), while 1,000 `GET /chats/?limit=20`
  run back to back on another connection (with their p50/p99 idle and meanwhile), and 4 replies together.
  llama-server runs with OpenMP's default wait, as its users run it."""


def cold_history() -> list[tuple[str, str]]:
    """The looping history, made distinct at its start: no cache holds more of it than the system prompt."""
    (role, first), *rest = ENDLESS
    return [(role, f"(Conversation {uuid.uuid4().hex[:8]}) {first}"), *rest]


def warm_history() -> list[tuple[str, str]]:
    """The looping history, made distinct at its end: a cache holding another chat's copy has all but ~15 tokens."""
    *rest, (role, last) = ENDLESS
    return [*rest, (role, f"{last} (Conversation {uuid.uuid4().hex[:8]})")]


# The two kinds of request: prompts mostly in the cache (what batching is for: generating), and prompts read
# whole (~260 tokens each: reading them is most of the work, and no scheduling makes reading faster).
WORKLOADS = {"new ~15 tokens": warm_history, "cold ~260 tokens": cold_history}


def together(asks: list[Callable[[], Reply]]) -> tuple[list[Reply], float]:
    """The replies asked at once from threads of this process, and their aggregate tokens/s."""
    replies: list[Reply | BaseException | None] = [None] * len(asks)

    def ask(n: int) -> None:
        try:
            replies[n] = asks[n]()
        except BaseException as exc:  # reported below
            replies[n] = exc

    threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in range(len(asks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [r for r in replies if not isinstance(r, Reply)]
    if failed:
        raise RuntimeError(f"a reply failed: {failed[0]}")
    tokens = sum(len(r.tokens) for r in replies)
    elapsed = max(r.done_at for r in replies) - min(r.sent for r in replies)
    return replies, tokens / elapsed


def ours(server: Server, count: int, history: Callable = warm_history) -> tuple[list[Reply], float]:
    urls = [server.infer_url(server.new_chat(history()), TOKENS) for _ in range(count)]
    return together([partial(stream, url) for url in urls])


def theirs(server: LlamaServer, count: int, history: Callable = warm_history) -> tuple[list[Reply], float]:
    return together([partial(server.stream, prompt_text(history()), TOKENS) for _ in range(count)])


def long_prompt() -> list[tuple[str, str]]:
    """A chat of one ~2,000-token message, distinct from its start: no cache holds any of it."""
    return [("Human", f"(Conversation {uuid.uuid4().hex[:8]}) {LONG_PROMPT}")]


def gaps(times: list[float], sent: float, first: float) -> tuple[list[float], list[float]]:
    """Gaps (ms) between a running reply's tokens before a long prompt was sent, and those that overlap its reading
    (from its request to its first token: a stall for the whole of it is one gap)."""
    pairs = list(zip(times, times[1:], strict=False))
    before = [(b - a) * 1000 for a, b in pairs if b < sent]
    return before, [(b - a) * 1000 for a, b in pairs if b >= sent and a <= first]


def gaps_beside_a_long_prompt(server: Server) -> tuple[list[float], list[float], Reply, int]:
    """A running reply's gaps before and while a long prompt is read beside it, the long prompt's reply, its tokens."""
    running = server.new_chat(ENDLESS)
    long_chat = server.new_chat(long_prompt())
    beside = ReplyBeside(server, running, 2000, started_after=60)
    sent = time.perf_counter()
    long_reply = stream(server.infer_url(long_chat, 8))
    before, during = gaps(beside.stop().tokens, sent, long_reply.tokens[0])
    return before, during, long_reply, long_reply.done["usage"]["prompt_tokens"]


def their_gaps_beside_a_long_prompt(llama: LlamaServer) -> tuple[list[float], list[float], Reply, int]:
    """The same on llama-server: the running reply is dropped (its connection closed) once the long prompt is read."""
    started, read = threading.Event(), threading.Event()
    times: list[float] = []  # the running reply's token arrivals

    def on_token(count: int) -> None:
        times.append(time.perf_counter())
        if count >= 60:
            started.set()
        if read.is_set():
            raise StopAsyncIteration  # ends the running reply's stream: the connection is closed

    def listen() -> None:
        try:
            llama.stream(prompt_text(ENDLESS), 2000, on_token=on_token)
        except StopAsyncIteration:
            pass
        finally:
            started.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    started.wait(60)
    sent = time.perf_counter()
    long_reply = llama.stream(prompt_text(long_prompt()), 8)
    read.set()
    listener.join(60)
    before, during = gaps(times, sent, long_reply.tokens[0])
    return before, during, long_reply, long_reply.done["timings"]["prompt_n"]


def threads_part(path: str, workdir: Path) -> list[tuple]:
    rows = []
    for n, (name, settings) in enumerate(THREADS.items()):
        with Server(workdir / f"threads-{n}", path, **settings) as server:
            stream(server.infer_url(server.new_chat(ENDLESS), 16))  # warm-up
            alone = statistics.median(stream(server.infer_url(server.new_chat(ENDLESS), 256)).rate for _ in range(2))
            list_latencies(server, 10)
            idle = list_latencies(server, LIST_REQUESTS)
            during, info = latencies_during_generation(server, BESIDE_REQUESTS)
            four = statistics.median(ours(server, 4)[1] for _ in range(2))
        rows.append((name, alone, info["tokens_per_second"], idle, during, four))
    return rows


def step_part(path: str, workdir: Path, llama: LlamaServer | None) -> list[tuple]:
    """For each step size, and on llama-server: the running reply's token gaps before and beside the long prompt,
    the long prompt's reply and its tokens."""
    rows = [("llama-server", *their_gaps_beside_a_long_prompt(llama)) for _ in range(2)] if llama else []
    for step in STEPS:
        with Server(workdir / f"step-{step}", path, CHATAPI_STEP_TOKENS=str(step)) as server:
            stream(server.infer_url(server.new_chat(ENDLESS), 16))  # warm-up
            rows.append((f"step {step}", *gaps_beside_a_long_prompt(server)))
    return rows


def summary(runs: dict) -> tuple[dict, float, dict]:
    """Median aggregate tokens/s by concurrency, one reply's whole time alone, worst first token by concurrency."""
    aggregate = {n: statistics.median(rate for _, rate in runs[n]) for n in CONCURRENCY}
    single_total = statistics.median(r[0].done_at - r[0].sent for r, _ in runs[1])
    worst = {n: statistics.median(max(r.ttft for r in replies) for replies, _ in runs[n]) for n in CONCURRENCY}
    return aggregate, single_total, worst


def main() -> None:
    path = model_path()
    print(f"Several replies at once: gunicorn + gevent on 127.0.0.1, model {Path(path).name}, {os.cpu_count()} CPUs")
    print(
        f"server defaults: CHATAPI_PARALLEL={PARALLEL}, CHATAPI_N_THREADS={Config.CHATAPI_N_THREADS}, "
        f"CHATAPI_STEP_TOKENS={Config.CHATAPI_STEP_TOKENS}"
    )
    runs: dict[tuple[str, str], dict] = {}  # (server, workload) -> concurrency -> [(replies, aggregate)]
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as tmp:
        workdir = Path(tmp)
        for name in ("batching", *(f"threads-{n}" for n in range(len(THREADS))), *(f"step-{n}" for n in STEPS)):
            (workdir / name).mkdir()
        with Server(workdir / "batching", path) as server:
            for workload, history in WORKLOADS.items():
                ours(server, Config.CHATAPI_KV_CHATS, history)  # warm-up: every KV sequence has been used
                runs["chatapi", workload] = {n: [ours(server, n, history) for _ in range(RUNS)] for n in CONCURRENCY}
        steps = []
        if llama_server.BINARY:
            with LlamaServer(path, workdir / "llama-server.log") as llama:
                for workload, history in WORKLOADS.items():
                    theirs(llama, PARALLEL, history)  # warm-up: every slot has been used
                    runs["llama-server", workload] = {
                        n: [theirs(llama, n, history) for _ in range(RUNS)] for n in CONCURRENCY
                    }
                steps += step_part(path, workdir, llama)
        else:
            steps += step_part(path, workdir, None)
        threads = threads_part(path, workdir)

    print(f"{'measure':62} {'baseline':>15} {'measured':>14} {'ratio':>7}  goal")

    def row(name: str, baseline: str, measured: str, ratio: float, goal: str = "") -> None:
        print(f"{name:62} {baseline:>15} {measured:>14} {ratio:7.3f}  {goal}".rstrip())

    for (who, workload), by_count in runs.items():
        aggregate, single_total, worst = summary(by_count)
        with_goals = who == "chatapi" and workload == next(iter(WORKLOADS))
        for n in CONCURRENCY[1:]:
            name = f"{who}, {workload}: aggregate tok/s, {n} together"
            goal = f">= {AGGREGATE_GOAL}" if n == 4 and with_goals else ""
            row(name, f"{aggregate[1]:.1f} alone", f"{aggregate[n]:.1f}", aggregate[n] / aggregate[1], goal)
        for n in CONCURRENCY[1:]:
            name = f"{who}, {workload}: worst 1st token, {n} / 1 reply's time"
            goal = f"<= {WAIT_GOAL}" if n == 4 and with_goals else ""
            row(name, f"{single_total * 1000:.0f} ms", f"{worst[n] * 1000:.0f} ms", worst[n] / single_total, goal)
    for workload in WORKLOADS:
        if ("llama-server", workload) in runs:
            ours_4 = summary(runs["chatapi", workload])[0][4]
            theirs_4 = summary(runs["llama-server", workload])[0][4]
            name = f"{workload}: aggregate tok/s at 4, chatapi / llama-server"
            row(name, f"{theirs_4:.1f} llama", f"{ours_4:.1f} ours", ours_4 / theirs_4)
    if not llama_server.BINARY:
        print(llama_server.NOT_COMPARED)
    theirs_first = [reply.ttft for who, _, _, reply, _ in steps if who == "llama-server"]
    for who, before, during, _, _ in steps:
        name = f"token gap p99 beside a 2,000-token prompt, {who}"
        p99_before, p99_during = percentile(before, 99), percentile(during, 99)
        row(name, f"{p99_before:.1f} ms", f"{p99_during:.1f} ms", p99_during / p99_before, f"<= {GAP_GOAL}")
    for who, _, _, reply, _ in steps:
        if theirs_first and who != "llama-server":
            theirs_ms = statistics.median(theirs_first) * 1000
            name = f"2,000-token prompt's first token, {who} / llama-server"
            row(name, f"{theirs_ms:.0f} ms", f"{reply.ttft * 1000:.0f} ms", reply.ttft * 1000 / theirs_ms, "<= 1")
    print(
        f"{'model threads':18} {'alone tok/s':>12} {'beside listings':>16} {'list p50 idle/gen ms':>22} "
        f"{'list p99 idle/gen ms':>22} {'4 together tok/s':>17}"
    )
    for n_threads, alone, beside, idle, during_list, four in threads:
        print(
            f"{n_threads:<18} {alone:12.1f} {beside:16.1f} "
            f"{percentile(idle, 50):10.1f}/{percentile(during_list, 50):<11.1f}"
            f"{percentile(idle, 99):10.1f}/{percentile(during_list, 99):<11.1f} {four:17.1f}"
        )
    print("details:")
    for (who, workload), by_count in runs.items():
        for n, measured in by_count.items():
            ttfts = "; ".join(", ".join(f"{r.ttft * 1000:.0f}" for r in replies) for replies, _ in measured)
            rates = ", ".join(f"{rate:.1f}" for _, rate in measured)
            print(f"  {who}, {workload}, {n} together: aggregate tok/s {rates}; first-token ms per run {ttfts}")
    for who, before, during, reply, prompt_tokens in steps:
        print(
            f"  {who}: the {prompt_tokens}-token prompt's first token after {reply.ttft * 1000:.0f} ms; gaps measured "
            f"{len(before)} before, {len(during)} during"
        )

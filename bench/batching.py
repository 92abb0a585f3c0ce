"""Several replies at once (continuous batching), and the model's thread count, against baselines from the same run.

1. 1, 2 and 4 replies asked together (distinct chats whose ~260-token prompts no cache holds but for the
   system prompt, max_tokens=128, temperature 0): aggregate tokens/s
   (all token events over the time from the first request to the last `done`), each client's time to first
   token. Ratios: aggregate at 4 over 1 reply alone; the worst first-token time at 4 over one reply's whole
   time alone (1.0 would mean the last client waited for a whole reply).
2. Gaps between two tokens of one reply (p99) while a ~2,000-token prompt is read beside it, over the same
   reply's gaps before that prompt arrived.
3. CHATAPI_N_THREADS 1 and 2: one reply's tokens/s alone, and while GET /chats/?limit=20 runs back to back
   on another connection, with the listings' p50 and p99.

Every wait is bounded (the streams' deadline, the server's start-up) and every loop counted.
"""

import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.inference import (
    ENDLESS,
    LIST_REQUESTS,
    Reply,
    Server,
    latencies_during_generation,
    list_latencies,
    model_path,
    percentile,
    stream,
)

TOKENS = 128
RUNS = 3  # measured repetitions of each concurrency, after one warm-up
CONCURRENCY = (1, 2, 4)
AGGREGATE_GOAL = 1.6  # llama.cpp's server with 4 slots on this machine: 1.57
WAIT_GOAL = 0.25
LONG_PROMPT = "Please summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 200
THREADS = (1, 2)


def cold_history() -> list[tuple[str, str]]:
    """The looping history, made distinct at its start: no cache holds more of it than the system prompt."""
    (role, first), *rest = ENDLESS
    return [(role, f"(Conversation {uuid.uuid4().hex[:8]}) {first}"), *rest]


def together(server: Server, count: int) -> tuple[list[Reply], float]:
    """`count` replies asked at once from threads of this process; the replies and the aggregate tokens/s."""
    chats = [server.new_chat(cold_history()) for _ in range(count)]
    replies: list[Reply | BaseException] = [None] * count  # type: ignore[list-item]

    def ask(n: int) -> None:
        try:
            replies[n] = stream(server.infer_url(chats[n], TOKENS))
        except BaseException as exc:  # reported below
            replies[n] = exc

    threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [r for r in replies if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"a reply failed: {failed[0]}")
    tokens = sum(len(r.tokens) for r in replies)
    elapsed = max(r.done_at for r in replies) - min(r.sent for r in replies)
    return replies, tokens / elapsed


def gaps_beside_a_long_prompt(server: Server) -> tuple[list[float], list[float], dict]:
    """Gaps (ms) between a running reply's tokens before and while a long prompt is read beside it."""
    running = server.new_chat(ENDLESS)
    long_chat = server.new_chat([("Human", LONG_PROMPT)])
    outcome: dict = {}
    enough = threading.Event()

    def listen() -> None:
        try:
            outcome["running"] = stream(server.infer_url(running, 2000), on_token=lambda n: n >= 60 and enough.set())
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            enough.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    enough.wait(120)
    sent = time.perf_counter()
    long_reply = stream(server.infer_url(long_chat, 8))
    server.stop_generation(running)
    listener.join(120)
    if "error" in outcome or "running" not in outcome:
        raise RuntimeError(f"the running reply failed: {outcome.get('error')}")
    times = outcome["running"].tokens
    before = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False) if b < sent]
    during = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False) if sent <= a and b <= long_reply.tokens[0]]
    return before, during, long_reply.done


def threads_part(path: str, workdir: Path) -> list[tuple]:
    rows = []
    for n_threads in THREADS:
        with Server(workdir / f"threads-{n_threads}", path, CHATAPI_N_THREADS=str(n_threads)) as server:
            stream(server.infer_url(server.new_chat(ENDLESS), 16))  # warm-up
            alone = statistics.median(stream(server.infer_url(server.new_chat(ENDLESS), 256)).rate for _ in range(2))
            list_latencies(server, 10)
            idle = list_latencies(server, LIST_REQUESTS)
            during, info = latencies_during_generation(server)
            four = statistics.median(together(server, 4)[1] for _ in range(2))
        rows.append((n_threads, alone, info["tokens_per_second"], idle, during, four))
    return rows


def main() -> None:
    path = model_path()
    print(f"Several replies at once: gunicorn + gevent on 127.0.0.1, model {Path(path).name}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "batching").mkdir()
        with Server(workdir / "batching", path) as server:
            together(server, 1)  # warm-up
            results = {n: [together(server, n) for _ in range(RUNS)] for n in CONCURRENCY}
            before, during, long_done = gaps_beside_a_long_prompt(server)
        for n_threads in THREADS:
            (workdir / f"threads-{n_threads}").mkdir()
        threads = threads_part(path, workdir)

    aggregate = {n: statistics.median(rate for _, rate in results[n]) for n in CONCURRENCY}
    single_total = statistics.median(r[0].done_at - r[0].sent for r, _ in results[1])
    worst_ttft = {n: statistics.median(max(r.ttft for r in replies) for replies, _ in results[n]) for n in CONCURRENCY}

    print(f"{'measure':58} {'baseline':>16} {'measured':>16} {'ratio':>7}  goal")

    def row(name: str, baseline: str, measured: str, ratio: float, goal: str = "") -> None:
        print(f"{name:58} {baseline:>16} {measured:>16} {ratio:7.3f}  {goal}".rstrip())

    for n in CONCURRENCY[1:]:
        goal = f">= {AGGREGATE_GOAL}" if n == 4 else ""
        row(
            f"aggregate tokens/s, {n} replies together",
            f"{aggregate[1]:.1f} alone",
            f"{aggregate[n]:.1f}",
            aggregate[n] / aggregate[1],
            goal,
        )
    for n in CONCURRENCY[1:]:
        goal = f"<= {WAIT_GOAL}" if n == 4 else ""
        row(
            f"worst first token, {n} together / one reply's whole time",
            f"{single_total * 1000:.0f} ms",
            f"{worst_ttft[n] * 1000:.0f} ms",
            worst_ttft[n] / single_total,
            goal,
        )
    row(
        "token gap p99 while a 2,000-token prompt is read",
        f"{percentile(before, 99):.1f} ms",
        f"{percentile(during, 99):.1f} ms",
        percentile(during, 99) / percentile(before, 99),
    )
    print(
        f"{'CHATAPI_N_THREADS':18} {'alone tok/s':>12} {'beside listings':>16} {'list p50 idle/gen ms':>22} "
        f"{'list p99 idle/gen ms':>22} {'4 together tok/s':>17}"
    )
    for n_threads, alone, beside, idle, during_list, four in threads:
        print(
            f"{n_threads:<18} {alone:12.1f} {beside:16.1f} "
            f"{percentile(idle, 50):10.1f}/{percentile(during_list, 50):<11.1f}"
            f"{percentile(idle, 99):10.1f}/{percentile(during_list, 99):<11.1f} {four:17.1f}"
        )
    print("details:")
    for n in CONCURRENCY:
        ttfts = "; ".join(", ".join(f"{r.ttft * 1000:.0f}" for r in replies) for replies, _ in results[n])
        print(
            f"  {n} together: aggregate tokens/s {', '.join(f'{rate:.1f}' for _, rate in results[n])}; "
            f"first-token ms per run {ttfts}"
        )
    print(
        f"  long prompt: {long_done['usage']['prompt_tokens']} tokens, read beside the reply in "
        f"{long_done['timings']['ttft_ms']:.0f} ms; gaps measured {len(before)} before, {len(during)} during"
    )

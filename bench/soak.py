"""Soak: the server's memory across 2,000 chat replies and 2,000 /v1 completions.

The real server (gunicorn, one gevent worker, the real model) on a fresh SQLite database. After a warm-up of each
kind, CLIENTS threads of this process ask, each time for something new: a new chat with one Human message and its
reply (`GET /conversations/inference/<chat_id>?max_tokens=4` read to `done`), then a /v1 completion of a question of
its own (`max_tokens` 4, not streamed). The worker's resident memory (VmRSS of /proc/<pid>/status) is read before,
every SAMPLE_EVERY requests, and after each kind; the goal (issue 20) is that it grows by less than GOAL_MB in all.
CHATAPI_BENCH_SOAK sets how many of each kind (a shorter run to try it out).

The baseline is the worker's own memory after the warm-up, in the same run.
Run it alone: `.venv/bin/python -m bench soak` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Memory: 2,000 replies and 2,000 /v1 completions" (TITLE), after NOTES, which say how each figure is taken.
"""

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import Server, model_path, stream

REQUESTS = int(os.environ.get("CHATAPI_BENCH_SOAK") or 2000)  # of each kind
WARM_UP = max(1, REQUESTS // 20)  # of each kind, before the first reading
CLIENTS = 4  # requests at once: the server's CHATAPI_PARALLEL
MAX_TOKENS = 4
SAMPLE_EVERY = max(1, REQUESTS // 4)  # 500
GOAL_MB = 100
QUESTION = "Question {n}: what is the capital of France, and why?"


TITLE = "Memory: 2,000 replies and 2,000 /v1 completions"
NOTES = f"""\
The server's memory over many requests (issue 20): the real server (gunicorn, one gevent worker, the defaults,
`CHATAPI_REPLIES_KEPT_MB` 64) on a fresh SQLite database, `bench/soak.py`. After a warm-up of {WARM_UP} of
each kind, {CLIENTS} client threads ask for {REQUESTS:,} chat replies, each in a new chat with one Human
message of its own (`GET /conversations/inference/<chat_id>?max_tokens={MAX_TOKENS}` read to `done`), then
{REQUESTS:,} `/v1/chat/completions` of a question of their own (`max_tokens` {MAX_TOKENS}, not streamed).
*RSS* is the worker's resident memory (`VmRSS` of `/proc/<pid>/status`) before and after each kind; goal: it grows
by less than {GOAL_MB} MB in all. Every chat reply is kept for reconnects (about 5 KB each at
{MAX_TOKENS} tokens, well within the 64 MB); no /v1 one is."""


def rss_mb(pid: int) -> float:
    """The process's resident memory in MB (VmRSS, which /proc gives in kB)."""
    with open(f"/proc/{pid}/status") as status:
        kilobytes = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kilobytes / 1024


def chat_reply(server: Server, n: int) -> None:
    """A new chat with one question, and its reply read to `done`. A connection of its own for each request: the
    server's Session is not for several threads, and a kept-alive connection the server has closed meanwhile would
    fail a POST."""
    created = requests.post(f"{server.url}/chats/create", json={"name": f"soak {n}"}, timeout=30)
    created.raise_for_status()
    chat_id = created.json()["id"]
    message = {"chat_id": chat_id, "role": "Human", "message": QUESTION.format(n=n)}
    requests.post(f"{server.url}/conversations/create", json=message, timeout=30).raise_for_status()
    stream(server.infer_url(chat_id, MAX_TOKENS), allow_empty=True)


def completion(server: Server, n: int) -> None:
    """A /v1 completion of a question of its own."""
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": QUESTION.format(n=n)}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    response = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"/v1/chat/completions: {response.status_code} {response.text}")


def run(server: Server, ask, first: int, count: int, pid: int, samples: list[tuple[int, float]]) -> float:
    """`count` requests from CLIENTS threads, numbered from `first`, RSS read every SAMPLE_EVERY; their seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for done, _ in enumerate(pool.map(lambda n: ask(server, n), range(first, first + count)), start=1):
            if done % SAMPLE_EVERY == 0:
                samples.append((done, rss_mb(pid)))
    return time.perf_counter() - started


def main() -> None:
    path = model_path()
    print(f"Soak: {REQUESTS} chat replies, then {REQUESTS} /v1 completions, max_tokens={MAX_TOKENS}, {CLIENTS} at once")
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir, Server(Path(workdir), path) as server:
        (pid,) = server.workers()
        booted = rss_mb(pid)
        for ask in (chat_reply, completion):
            run(server, ask, -WARM_UP, WARM_UP, pid, [])
        kinds = []
        for name, ask in (("chat API replies", chat_reply), ("/v1 completions", completion)):
            before, samples = rss_mb(pid), []
            seconds = run(server, ask, 0, REQUESTS, pid, samples)
            kinds.append((name, before, rss_mb(pid), seconds, samples))
        if server.workers() != [pid]:
            raise RuntimeError("the worker was replaced during the run: its RSS readings are not one process's")
    first, last = kinds[0][1], kinds[-1][2]
    print(f"{'requests':30} {'RSS before':>11} {'RSS after':>10} {'growth':>8}  goal")
    for name, before, after, _, _ in kinds:
        print(f"{f'{REQUESTS} {name}':30} {before:8.1f} MB {after:7.1f} MB {after - before:+5.1f} MB")
    both = f"both, {2 * REQUESTS} requests"
    print(f"{both:30} {first:8.1f} MB {last:7.1f} MB {last - first:+5.1f} MB  < {GOAL_MB} MB")
    print("details:")
    print(f"  the worker's RSS once the model had loaded: {booted:.1f} MB; after the warm-up: {first:.1f} MB")
    for name, _, _, seconds, samples in kinds:
        readings = ", ".join(f"{done}: {mb:.1f}" for done, mb in samples)
        print(f"  {name}: {seconds:.0f} s ({REQUESTS / seconds:.1f}/s); RSS in MB after {readings}")
    print(f"  server log: {len(server.problems)} error lines", *server.problems[:5], sep="\n    ")

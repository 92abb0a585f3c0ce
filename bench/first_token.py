"""A first token as fast as llama-server's (issue 24, point 6): our time to first token in parts, beside llama.cpp's
own llama-server on the same GGUF and the same prompt text, 1 reply alone and 4 at once.

Run it alone: `.venv/bin/python -m bench first_token` (with CHATAPI_BENCH_LLAMA_SERVER set; `make bench` builds
llama-server and sets it). Its table is in docs/benchmarks.md under TITLE, after NOTES.
"""

import os
import statistics
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import llama_server
from bench.common import Reply, Server, model_path, prompt_text, stream
from bench.llama_server import LlamaServer
from config import Config
from tests.support.chats import LONG_QUESTION

TOKENS = 128
ROUNDS = 3  # each: ALONE replies one after another, then TOGETHER at once, on each server in turn
ALONE = 4
TOGETHER = 4

TITLE = "First token beside llama-server"
NOTES = """\
Our server (gunicorn, one gevent worker, its defaults) and llama.cpp's `llama-server` (built by `make llama-server`
from the llama.cpp vendored in the pinned llama-cpp-python; `-np 4 -t 2 --swa-full`, 4 windows of 4,096) run side by
side on the same GGUF, both up for the whole run and asked in turns (a reply on ours, the same on llama-server, ...),
so that the machine's ups and downs fall on both alike. Each reply is a new chat of ~110 tokens (the system prompt,
a question whose start is the chat's own, a short answer, the question again: the bundled model then loops "I don't
know." to `max_tokens`), 128 tokens at temperature 0; llama-server gets the prompt text our server builds for the
same history, on `/completion`, streamed. Both find the system prompt in a cache (another chat's sequence or slot)
and read the rest. 3 rounds, each: 4 replies one after another, then 4 at once. Times are the client's, from sending
the request; medians, and the ratio is the median of each turn's ours ÷ llama-server's.

- **first token alone**, **whole reply alone**: to the first token, and to the end of the reply (`done`, or
  llama-server's last chunk). **slowest first token of 4**: the last of 4 replies asked at once to get its first token.
- **in parts**: our first token split by `done.timings`: *before the reply* (the HTTP request, the chat and its
  history read from the database: the client's time to the `start` event less building the prompt), *prompt*
  (rendering the history and tokenizing it, `prompt_ms`), *queue* (waiting for a place, `queue_ms` less the prompt),
  *hand-off* (from the queue to the model's thread, `handoff_ms`), *prefill* (the model reading the prompt to its
  first token, `prefill_ms`), *to the client* (the rest: the token from the model's thread to the event loop to the
  socket). *before the reply* also holds the `start` event's own way out, which overlaps the next parts, so *to the
  client* can come out a few ms below 0. llama-server's own `timings.prompt_ms` is its prefill; the rest of its first
  token is its HTTP and tokenizing, and the token's way out."""


def history() -> list[tuple[str, str]]:
    """~110 tokens, distinct after the system prompt; the bundled model answers with a loop to max_tokens."""
    question = f"(Conversation {uuid.uuid4().hex[:8]}) {LONG_QUESTION}"
    return [("Human", question), ("Assistant", "I don't know. " * 6), ("Human", LONG_QUESTION)]


def at_once(asks: list) -> list[Reply]:
    """The asks (each a function that reads one reply) at the same time, from threads of this process."""
    with ThreadPoolExecutor(len(asks)) as pool:
        return list(pool.map(lambda ask: ask(), asks))


def ours(server: Server, count: int) -> list[Reply]:
    urls = [server.infer_url(server.new_chat(history()), TOKENS) for _ in range(count)]
    return at_once([lambda url=url: stream(url) for url in urls])


def theirs(llama: LlamaServer, count: int) -> list[Reply]:
    prompts = [prompt_text(history()) for _ in range(count)]
    return at_once([lambda prompt=prompt: llama.stream(prompt, TOKENS) for prompt in prompts])


def parts(reply: Reply) -> dict[str, float]:
    """Our first token in parts (ms), from the client's times and the server's `done.timings`."""
    timings = reply.done["timings"]
    ttft = reply.ttft * 1000
    to_start = (reply.named["start"][0] - reply.sent) * 1000
    before = to_start - timings["prompt_ms"]
    split = {"before the reply": before, "prompt": timings["prompt_ms"]}
    split["queue"] = timings["queue_ms"] - timings["prompt_ms"]
    split["hand-off"] = timings["handoff_ms"]
    split["prefill"] = timings["prefill_ms"]
    split["to the client"] = ttft - before - timings["ttft_ms"]
    return split


def their_parts(reply: Reply) -> dict[str, float]:
    prefill = reply.done["timings"]["prompt_ms"]
    return {"prefill": prefill, "the rest": reply.ttft * 1000 - prefill}


def median_parts(splits: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(split[name] for split in splits) for name in splits[0]}


def main() -> None:
    path = model_path()
    print(f"{TITLE}: model {Path(path).name}, {os.cpu_count()} CPUs, ~110-token prompts, {TOKENS}-token replies")
    if not llama_server.BINARY:
        print(llama_server.NOT_COMPARED)
        return
    alone: dict[str, list[Reply]] = {"chatapi": [], "llama-server": []}
    together: dict[str, list[list[Reply]]] = {"chatapi": [], "llama-server": []}
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as tmp:
        workdir = Path(tmp)
        with Server(workdir, path) as server, LlamaServer(path, workdir / "llama-server.log") as llama:
            asks = {"chatapi": lambda n: ours(server, n), "llama-server": lambda n: theirs(llama, n)}
            for ask in asks.values():  # warm-up: every sequence and slot used once
                ask(Config.CHATAPI_KV_CHATS)
                ask(1)
            # Taken in turns, a reply (or 4) on each, so that the machine's ups and downs fall on both alike.
            for _ in range(ROUNDS):
                for _ in range(ALONE):
                    for who, ask in asks.items():
                        alone[who] += ask(1)
                for who, ask in asks.items():
                    together[who].append(ask(TOGETHER))
        problems = server.problems

    def first(replies: list[Reply]) -> float:
        return replies[0].ttft

    def whole(replies: list[Reply]) -> float:
        return replies[0].done_at - replies[0].sent

    def slowest(replies: list[Reply]) -> float:
        return max(r.ttft for r in replies)

    def last_done(replies: list[Reply]) -> float:
        return max(r.done_at for r in replies) - min(r.sent for r in replies)

    print(f"{'measure (median ms; ratio: median of turns)':46} {'chatapi':>8} {'llama-server':>13} {'ratio':>6}  goal")
    for name, measure, runs, goal in (
        ("first token alone", first, {who: [[r] for r in replies] for who, replies in alone.items()}, "<= 1.00"),
        ("whole reply alone", whole, {who: [[r] for r in replies] for who, replies in alone.items()}, "<= 1.00"),
        (f"slowest first token of {TOGETHER}", slowest, together, "<= 1.00"),
        (f"all {TOGETHER} done", last_done, together, ""),
    ):
        ours_ms, theirs_ms = ([measure(run) * 1000 for run in runs[who]] for who in ("chatapi", "llama-server"))
        ratio = statistics.median(a / b for a, b in zip(ours_ms, theirs_ms, strict=True))
        mine, other = statistics.median(ours_ms), statistics.median(theirs_ms)
        print(f"{name:46} {mine:8.0f} {other:13.0f} {ratio:6.2f}  {goal}".rstrip())

    def show(label: str, split) -> None:
        print(f"{label}, in parts (ms): " + ", ".join(f"{name} {ms:.1f}" for name, ms in split.items()))

    def slowest_of(who: str) -> list[Reply]:
        return [max(replies, key=lambda r: r.ttft) for replies in together[who]]

    show("chatapi's first token alone", median_parts([parts(r) for r in alone["chatapi"]]))
    show("llama-server's first token alone", median_parts([their_parts(r) for r in alone["llama-server"]]))
    show(f"chatapi's slowest of {TOGETHER}", median_parts([parts(r) for r in slowest_of("chatapi")]))
    show(f"llama-server's slowest of {TOGETHER}", median_parts([their_parts(r) for r in slowest_of("llama-server")]))
    print("details:")
    for who in alone:
        ttfts = ", ".join(f"{r.ttft * 1000:.0f}" for r in alone[who])
        print(f"  {who} alone: first token ms {ttfts}; tokens {[len(r.tokens) for r in alone[who]]}")
        for n, replies in enumerate(together[who]):
            ttfts = ", ".join(f"{r.ttft * 1000:.0f}" for r in sorted(replies, key=lambda r: r.ttft))
            print(f"  {who} {TOGETHER} at once, round {n + 1}: first token ms {ttfts}")
    usage = [(r.done["usage"]["prompt_tokens"], r.done["usage"]["cached_tokens"]) for r in alone["chatapi"]]
    print(f"  chatapi alone: (prompt, cached) tokens {usage}")
    usage = [(r.done["timings"]["prompt_n"], r.done["timings"]["cache_n"]) for r in alone["llama-server"]]
    print(f"  llama-server alone: (prompt read, cached) tokens {usage}")
    print(f"  server log: {len(problems)} error lines")

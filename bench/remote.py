"""The remote backend (CHATAPI_LLM_BACKEND=openai) against the same model server consumed directly, in the same
run: llama_cpp.server on the bundled GGUF, chatapi instances and nginx as tests/support/deployment.py starts them.

1. Streaming throughput: content chunks per second a client reads from the model server's /v1/chat/completions
   (the messages chatapi sends for the chat), and token events per second from chatapi's
   GET /conversations/inference/<chat_id> for the same chat, directly and through nginx. Ratio chatapi ÷ direct.
2. Time to first token added by chatapi: the same requests with few tokens; medians of chatapi's and the
   direct ones, taken in turns (the model server finds the same prompt cached each time).
   1 and 2 run without Redis, and with it (CHATAPI_REDIS_URL) when this chatapi has the setting.
3. Replies resumed across instances (with Redis): K replies started on instance A, each read for a few events and
   dropped, then resumed on instance B with Last-Event-ID; how many resumed to `done` whole, and the time from
   the reconnect to the first resumed event.

Every wait is bounded (DEADLINE_SECONDS for a stream, the servers' start-up limits).

Run it alone: `.venv/bin/python -m bench remote` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Remote backend, Redis and several instances" (TITLE), after NOTES, which say how each figure is taken.
"""

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import (
    DEADLINE_SECONDS,
    ENDLESS,
    STREAM_GOAL,
    STREAM_TOKENS,
    Reply,
    completion_stream,
    model_path,
    stream,
)
from chatapi.llm.prompt import Message, chat_messages
from config import Config
from tests.support.chats import add_message, history
from tests.support.deployment import Deployment, model_server, scratch_database
from tests.support.sse import EventStream

RUNS = 5  # streams per side for the throughput, after one warm-up each
TTFT_RUNS = 10  # pairs of short requests, after two warm-up pairs
TTFT_TOKENS = 8
TTFT_GOAL_MS = 20
RESUMED = 4  # replies started on A and resumed on B
RESUME_TOKENS = 96
READ_BEFORE_DROP = 3


TITLE = "Remote backend, Redis and several instances"
NOTES = f"""\
The remote backend (`CHATAPI_LLM_BACKEND=openai`) deployed as `tests/test_deployment.py` deploys it
(`tests/support/deployment.py`, `bench/remote.py`): llama-cpp-python's OpenAI server (`python -m llama_cpp.server`,
Gemma's turn format, one reply at a time, all cores) on the bundled GGUF, chatapi instances (gunicorn, one gevent
worker each) on a PostgreSQL database of the run's own, nginx in front with `deploy/nginx.conf`; one chatapi
instance for the first two measures, two for the third. Every ratio against the same model server consumed
directly in the same run, the sides taken in turns.

- **tok/s**: content chunks per second that a client reads from the model server's `/v1/chat/completions`
  (*direct*: `stream: true`, `temperature` 0, the messages chatapi sends for the chat: its system prompt, then
  the looping history of *Inference over HTTP*), and token events per second from chatapi's
  `GET /conversations/inference/<chat_id>?max_tokens={STREAM_TOKENS}&temperature=0` for a new chat with
  that history (*chatapi*: the instance itself; *nginx + chatapi*: through nginx); first token to last, median of
  {RUNS} after a warm-up. **÷ direct**: the median of each round's ratio (the sides of a round run back to
  back, so that load from elsewhere on the machine weighs on both alike); goal at least {STREAM_GOAL}.
- **TTFT**: from sending the request to the first token, `max_tokens={TTFT_TOKENS}`, median of
  {TTFT_RUNS} after two warm-ups; the model server finds the same prompt in its cache every time, so that
  the difference is chatapi's own. **added** = chatapi's median − direct's: goal at most {TTFT_GOAL_MS} ms.
  The details give the machine's load average as each configuration ran (other programs on the same cores).
- Both *without Redis* and *with Redis* (`CHATAPI_REDIS_URL` at 127.0.0.1:6379, a key prefix of the run's own),
  when this chatapi has that setting.
- **resumed**: with Redis, two instances; {RESUMED} replies (`max_tokens={RESUME_TOKENS}`) started
  on instance A one after another, each read for {READ_BEFORE_DROP} events and dropped, then all resumed
  at once on instance B with `Last-Event-ID`: how many came whole to `done` (every event once, in order, the text
  as saved), and the time from the reconnect to the first resumed event. The model server makes one reply at a
  time, so the later replies are still being made when they are resumed."""


def redis_supported() -> bool:
    """Whether this chatapi shares replies through Redis (issue 13, point 2)."""
    return hasattr(Config, "CHATAPI_REDIS_URL")


def first_to_last(reply: Reply) -> float:
    """Tokens per second from the first token to the last (not to `done`, which chatapi sends after saving)."""
    return (len(reply.tokens) - 1) / (reply.tokens[-1] - reply.tokens[0])


class Sides:
    """The ways to the model: the model server directly, chatapi directly, chatapi through nginx."""

    def __init__(self, deployment: Deployment):
        self.deployment = deployment
        self.chatapi = deployment.instances[0].url
        # Exactly what chatapi sends for a new chat with this history (chatapi/llm/remote.py request_body).
        system = Config.CHATAPI_SYSTEM_PROMPT
        self.messages = chat_messages(system, [Message(role, text) for role, text in ENDLESS]).messages
        self.http = requests.Session()

    def direct(self, max_tokens: int) -> Reply:
        return completion_stream(self.deployment.upstream.url, self.messages, max_tokens)

    def through(self, base: str, max_tokens: int) -> Reply:
        chat_id = self.http.post(f"{base}/chats/create", json={"name": "bench"}, timeout=10).json()["id"]
        for role, text in ENDLESS:
            add_message(base, chat_id, text, role)
        return stream(f"{base}/conversations/inference/{chat_id}?max_tokens={max_tokens}&temperature=0")

    def named(self) -> dict:
        return {
            "direct": self.direct,
            "chatapi": lambda n: self.through(self.chatapi, n),
            "nginx + chatapi": lambda n: self.through(self.deployment.url, n),
        }


def in_turns(sides: dict, max_tokens: int, warm_up: int, runs: int) -> dict[str, list[Reply]]:
    """Each side once per round, the order turning round by round; the warm-up rounds are left out."""
    names = list(sides)
    results: dict[str, list[Reply]] = {name: [] for name in names}
    for round_ in range(warm_up + runs):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            reply = sides[name](max_tokens)
            if round_ >= warm_up:
                results[name].append(reply)
    return results


def measure(deployment: Deployment) -> dict:
    load = os.getloadavg()[0]
    sides = Sides(deployment).named()
    rates = in_turns(sides, STREAM_TOKENS, 1, RUNS)
    for name, replies in rates.items():
        if any(len(reply.tokens) < STREAM_TOKENS * 0.9 for reply in replies):
            raise RuntimeError(f"{name}: the model stopped early: {[len(reply.tokens) for reply in replies]}")
    firsts = in_turns(sides, TTFT_TOKENS, 2, TTFT_RUNS)
    return {"rates": rates, "firsts": firsts, "load": (load, os.getloadavg()[0])}


def resume_across(deployment: Deployment) -> dict:
    """RESUMED replies started on A (each read for a few events, then dropped), resumed on B at once."""
    a, b = deployment.instances
    started = []
    for _ in range(RESUMED):
        chat_id = requests.post(f"{a.url}/chats/create", json={"name": "bench"}, timeout=10).json()["id"]
        for role, text in ENDLESS:
            add_message(a.url, chat_id, text, role)
        query = f"?max_tokens={RESUME_TOKENS}&temperature=0"
        events = EventStream(f"{a.url}/conversations/inference/{chat_id}{query}", timeout=DEADLINE_SECONDS)
        head = []
        for event in events:
            head.append(event)
            if len(head) == READ_BEFORE_DROP:
                break
        events.close()
        started.append((chat_id, query, head))
    outcomes: list[dict] = [{} for _ in started]

    def resume(index: int) -> None:
        chat_id, query, head = started[index]
        outcome = outcomes[index]
        sent = time.perf_counter()
        events = EventStream(f"{b.url}/conversations/inference/{chat_id}{query}", head[-1]["id"], DEADLINE_SECONDS)
        rest = []
        try:
            for event in events:
                outcome.setdefault("first_ms", (time.perf_counter() - sent) * 1000)
                rest.append(event)
        except requests.RequestException as exc:
            outcome["error"] = str(exc)
        finally:
            events.close()
        message_id = head[0]["data"]["message_id"]
        whole = head + rest
        text = "".join(e["data"]["content"] for e in whole if e["event"] == "message").strip()
        outcome["complete"] = (
            [e["id"] for e in whole] == [f"{message_id}.{n}" for n in range(len(whole))]
            and bool(rest)
            and rest[-1]["event"] == "done"
            and history(b.url, chat_id)[-1]["message"] == text
        )
        outcome["last"] = rest[-1]["event"] if rest else None

    threads = [threading.Thread(target=resume, args=(i,)) for i in range(len(started))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS)
    return {"outcomes": outcomes}


def report(label: str, results: dict) -> None:
    """Rates and TTFTs as medians; the ratio is the median of each round's (its sides ran back to back, so that a
    load from elsewhere on the machine weighs on both alike)."""
    direct = results["rates"]["direct"]
    ttft = {name: statistics.median(r.ttft for r in replies) * 1000 for name, replies in results["firsts"].items()}
    for name, replies in results["rates"].items():
        rate = statistics.median(first_to_last(r) for r in replies)
        ratio = statistics.median(first_to_last(r) / first_to_last(d) for r, d in zip(replies, direct, strict=True))
        added = f"{ttft[name] - ttft['direct']:8.1f}ms" if name != "direct" else ""
        print(f"{label:14} {name:16} {rate:7.1f} {ratio:8.3f} {ttft[name]:9.1f}ms {added:>10}".rstrip())


def details(label: str, results: dict) -> None:
    print(f"  {label}: load average (1 min) {results['load'][0]:.2f} at the start, {results['load'][1]:.2f} at the end")
    for name, replies in results["rates"].items():
        runs = ", ".join(f"{first_to_last(r):.1f}" for r in replies)
        print(f"  {label}, {name}: streaming runs {runs} tokens/s, {[len(r.tokens) for r in replies]} tokens")
    for name, replies in results["firsts"].items():
        print(f"  {label}, {name}: TTFT ms {', '.join(f'{r.ttft * 1000:.0f}' for r in replies)}")


def main() -> str | None:
    path = model_path()
    print(f"Remote backend: llama_cpp.server on {Path(path).name}, chatapi (CHATAPI_LLM_BACKEND=openai) and nginx")
    configurations = [("without Redis", False)] + ([("with Redis", True)] if redis_supported() else [])
    measured = {}
    resumed = None
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir, scratch_database() as database_url:
        work = Path(workdir)
        with model_server(work / "llama_cpp_server.log") as upstream:
            for label, use_redis in configurations:
                with Deployment(work / label.replace(" ", "-"), database_url, 1, use_redis, upstream) as deployment:
                    measured[label] = measure(deployment)
            if redis_supported():
                with Deployment(work / "resume", database_url, 2, True, upstream) as deployment:
                    resumed = resume_across(deployment)

    print(f"{'':14} {'client reads':16} {'tok/s':>7} {'÷ direct':>8} {'TTFT':>11} {'added':>10}")
    for label, results in measured.items():
        report(label, results)
    print(f"goals: tok/s ÷ direct >= {STREAM_GOAL}; TTFT added by chatapi <= {TTFT_GOAL_MS} ms (medians)")
    if resumed:
        outcomes = resumed["outcomes"]
        firsts = [o["first_ms"] for o in outcomes if "first_ms" in o]
        complete = sum(1 for o in outcomes if o["complete"])
        print(
            f"resumed on B with Last-Event-ID: {complete}/{len(outcomes)} whole to done; reconnect to first resumed "
            f"event {statistics.median(firsts):.1f} ms median, {max(firsts):.1f} ms max"
            if firsts
            else f"resumed on B with Last-Event-ID: {complete}/{len(outcomes)} (no event came)"
        )
    else:
        print("resumed across instances: not measured (this chatapi has no CHATAPI_REDIS_URL)")
    print("details:")
    for label, results in measured.items():
        details(label, results)
    if resumed:
        for i, outcome in enumerate(resumed["outcomes"]):
            print(f"  resumed {i}: {outcome}")
    if not redis_supported():
        return "Measured without Redis only: this chatapi has no CHATAPI_REDIS_URL yet."
    return None

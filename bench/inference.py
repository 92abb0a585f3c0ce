"""Inference over HTTP: the real server (gunicorn, one gevent worker) against baselines from the same run.

1. Streaming throughput: tokens per second a client receives from GET /conversations/inference/<chat_id>,
   divided by llama-cpp-python's own Llama generating the same prompt in this process (run before the
   server starts, so that the two never share the CPUs).
2. Follow-up time to first token: a chat with a ~1,500-token history, asked once (cold), then again after a
   short Human message (warm: the chat's KV cache should hold everything but the new tokens). Ratio warm/cold,
   for one chat at a time and for three chats taking turns (the server keeps CHATAPI_KV_CHATS=6 caches).
3. GET /chats/?limit=20 while the model is idle and while it generates: p50 and p99, ratio during/idle.

Every wait is bounded (DEADLINE_SECONDS for a stream, STARTUP_SECONDS for the server) and every loop counted.

Run it alone: `.venv/bin/python -m bench inference` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Inference over HTTP" (TITLE), after NOTES, which say how each figure is taken.
"""

import os
import statistics
import tempfile
from pathlib import Path

from bench.common import (
    ENDLESS,
    FOLLOW_UP,
    LIST_PATH,
    LIST_REQUESTS,
    STREAM_GOAL,
    STREAM_TOKENS,
    TTFT_GOAL,
    TTFT_TOKENS,
    Reply,
    Server,
    latencies_during_generation,
    list_latencies,
    long_history,
    model_path,
    percentile,
    prompt_text,
    raw_rates,
    stream,
)

RUNS = 3  # measured repetitions of the throughput and single-chat TTFT parts, after one warm-up


# The three measurements against the server


TITLE = "Inference over HTTP"
NOTES = """\
The real server (gunicorn, one gevent worker, `gunicorn.conf.py`) started as a subprocess on a free port of
127.0.0.1 with a fresh SQLite database, and the real model (the bundled Gemma 3 270M Q4_K_M unless
`CHATAPI_MODEL_PATH` says otherwise). Each line is a ratio against a baseline measured in the same run.

- **streaming tokens/s**: token events (SSE events without an `event:` line) per second that a client
  receives from `GET /conversations/inference/<chat_id>?max_tokens=256&temperature=0`, from the first token
  event to the `done` event, divided by llama-cpp-python's own `Llama.create_completion(stream=True)` on the
  same prompt text and settings in the benchmark's process, first token to last. The baseline runs before
  the server starts, so the two never share the CPUs. The history makes the model repeat "I don't know."
  until `max_tokens`. Both sides: one warm-up run, then the median of 3; rate = (tokens - 1) / time.
  The *details* also give the rate the server itself reports in `done.timings.tokens_per_second`.
- **follow-up TTFT**: time from sending the request to the first token event, `max_tokens=16`,
  `temperature=0`. *Cold* is the first question of a chat with about 1,450 prompt tokens of prose history;
  *warm* is the next question after one short Human message (`POST /conversations/create`), which should
  find the chat's history in its KV cache (`cached_tokens` in the details). One chat at a time: median of
  3 chats' warm/cold ratios. Three chats taking turns (A, B, C, then their follow-ups): mean warm TTFT over
  mean cold TTFT; the server keeps `CHATAPI_KV_CHATS=6` caches, so all three should stay warm.
- **GET /chats/?limit=20**: 200 sequential requests from the benchmark's process while the model is idle,
  then 200 while another connection streams a long reply (`max_tokens=2048`, stopped with
  `POST /conversations/stop/<chat_id>` once the 200 are done); p50 and p99 (nearest rank), ratio
  generating/idle. The details say how fast the reply kept streaming meanwhile."""


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

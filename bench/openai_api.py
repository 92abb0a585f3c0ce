"""The OpenAI-compatible API (/v1/chat/completions) against baselines from the same run.

1. Streaming throughput: content chunks per second a client receives from a streamed completion, divided by
   llama-cpp-python's own Llama generating the same prompt in this process (run before any server starts).
2. A resent conversation's time to first token: a ~1,500-token conversation asked once (cold), then resent
   with the answer and one short question more, as every OpenAI client does (warm: the prompt cache is found
   by its tokens). Ratio warm/cold.
3. Beside ours, when llama-cpp-python's own OpenAI server is installed (`llama-cpp-python[server]`), the same
   two measurements against `python -m llama_cpp.server` on the same GGUF.

Every wait is bounded (DEADLINE_SECONDS for a stream, STARTUP_SECONDS for a server).
"""

import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from bench.inference import (
    DEADLINE_SECONDS,
    ENDLESS,
    FOLLOW_UP,
    STREAM_GOAL,
    STREAM_TOKENS,
    TTFT_GOAL,
    TTFT_TOKENS,
    Reply,
    Server,
    long_history,
    model_path,
    raw_rates,
)
from config import Config
from tests.support.upstream import LlamaCppServer

RUNS = 3  # measured repetitions, after one warm-up
ROLES = {"Human": "user", "Assistant": "assistant"}


def as_messages(history: list[tuple[str, str]]) -> list[dict]:
    return [{"role": ROLES[role], "content": text} for role, text in history]


def completion_stream(base: str, messages: list[dict], max_tokens: int, text_needed: bool = True) -> Reply:
    """One streamed completion read to [DONE], timing each content chunk as it arrives; `done` holds the text,
    the finish reason and the usage (asked with stream_options.include_usage; None from a server without it)."""
    body = {
        "model": "any",
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


def streaming_rates(base: str) -> list[Reply]:
    """The looping conversation streamed to STREAM_TOKENS; one warm-up first."""
    replies = [completion_stream(base, as_messages(ENDLESS), STREAM_TOKENS) for _ in range(1 + RUNS)]
    for reply in replies:
        if len(reply.tokens) < STREAM_TOKENS * 0.9:
            raise RuntimeError(f"the server stopped early: {len(reply.tokens)} chunks, {reply.done}")
    return replies[1:]


def resent(base: str, tag: str, rotation: int) -> tuple[Reply, Reply]:
    """A ~1,500-token conversation asked (cold), then resent with its answer and a follow-up (warm)."""
    messages = as_messages(long_history(tag, rotation))
    cold = completion_stream(base, messages, TTFT_TOKENS)
    answered = [{"role": "assistant", "content": cold.done["text"]}, {"role": "user", "content": FOLLOW_UP}]
    return cold, completion_stream(base, [*messages, *answered], TTFT_TOKENS)


def measure(base: str) -> dict:
    # Loads the model; a base model may well end its answer at once in another server's chat format.
    completion_stream(base, [{"role": "user", "content": "warm-up"}], 4, text_needed=False)
    rates = streaming_rates(base)
    turns = [resent(base, f"O{n}", n) for n in range(RUNS)]
    return {"rates": rates, "turns": turns}


def llama_cpp_server_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("uvicorn", "fastapi", "sse_starlette"))


def main() -> None:
    path = model_path()
    # The server builds the transcript the bundled GGUF needs; the baseline reads the same text (no system prompt:
    # an OpenAI request without a system message has none).
    from chatapi.llm.prompt import Message, render_transcript

    prompt = render_transcript("", [Message(role, text) for role, text in ENDLESS])
    print(f"OpenAI-compatible API: /v1/chat/completions streamed, model {Path(path).name}, {os.cpu_count()} CPUs")
    raw, raw_prompt_tokens = raw_rates(path, prompt, RUNS)
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir:
        with Server(Path(workdir), path) as server:
            ours = measure(server.url)
        theirs = None
        if llama_cpp_server_installed():
            log = Path(workdir) / "llama_cpp_server.log"
            with LlamaCppServer(log, path, Config.CHATAPI_N_CTX, Config.CHATAPI_N_THREADS) as other:
                theirs = measure(other.url)

    raw_rate = statistics.median(raw)

    def summary(results: dict) -> tuple[float, float, float, float]:
        rate = statistics.median(r.rate for r in results["rates"])
        ratio = statistics.median(warm.ttft / cold.ttft for cold, warm in results["turns"])
        cold = statistics.median(cold.ttft for cold, _ in results["turns"]) * 1000
        warm = statistics.median(warm.ttft for _, warm in results["turns"]) * 1000
        return rate, ratio, cold, warm

    print(f"{'server':28} {'tok/s':>7} {'÷ in-process':>13} {'cold TTFT':>10} {'warm TTFT':>10} {'warm ÷ cold':>12}")
    print(f"{'in-process llama-cpp-python':28} {raw_rate:7.1f} {1:13.3f}")
    rows = [("chatapi /v1", ours)] + ([("llama_cpp.server /v1", theirs)] if theirs else [])
    for name, results in rows:
        rate, ratio, cold, warm = summary(results)
        print(f"{name:28} {rate:7.1f} {rate / raw_rate:13.3f} {cold:8.0f}ms {warm:8.0f}ms {ratio:12.3f}")
    print(f"goals (chatapi): tok/s ÷ in-process >= {STREAM_GOAL}; warm ÷ cold <= {TTFT_GOAL}")
    print("details:")
    print(f"  in-process runs, tokens/s: {', '.join(f'{r:.1f}' for r in raw)}; prompt {raw_prompt_tokens} tokens")
    for name, results in rows:
        rates = ", ".join(f"{r.rate:.1f}" for r in results["rates"])
        usages = [warm.done["usage"] or {} for _, warm in results["turns"]]
        prompts = "/".join(str(usage.get("prompt_tokens", "?")) for usage in usages)
        cached = "/".join(str((usage.get("prompt_tokens_details") or {}).get("cached_tokens", "?")) for usage in usages)
        print(f"  {name}: streaming runs {rates} tokens/s; resent prompts {prompts} tokens, cached {cached}")
    if theirs is None:
        print("  llama_cpp.server: not measured (install llama-cpp-python[server] to put it beside ours)")

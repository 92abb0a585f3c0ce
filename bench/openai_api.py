"""The OpenAI-compatible API (/v1/chat/completions) against baselines from the same run.

1. Streaming throughput: content chunks per second a client receives from a streamed completion, divided by
   llama-cpp-python's own Llama generating the same prompt in this process (run before any server starts).
2. A resent conversation's time to first token: a ~1,500-token conversation asked once (cold), then resent
   with the answer and one short question more, as every OpenAI client does (warm: the prompt cache is found
   by its tokens). Ratio warm/cold.
3. Beside ours, when llama-cpp-python's own OpenAI server is installed (`llama-cpp-python[server]`), the same
   two measurements against `python -m llama_cpp.server` on the same GGUF.

Every wait is bounded (DEADLINE_SECONDS for a stream, STARTUP_SECONDS for a server).

Run it alone: `.venv/bin/python -m bench openai` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "OpenAI-compatible API" (TITLE), after NOTES, which say how each figure is taken.
"""

import importlib.util
import os
import statistics
import tempfile
from pathlib import Path

from bench.common import (
    ENDLESS,
    FOLLOW_UP,
    STREAM_GOAL,
    STREAM_TOKENS,
    TTFT_GOAL,
    TTFT_TOKENS,
    Reply,
    Server,
    as_messages,
    completion_stream,
    long_history,
    model_path,
    prompt_text,
    raw_rates,
)
from config import Config
from tests.support.upstream import LlamaCppServer

RUNS = 3  # measured repetitions, after one warm-up


TITLE = "OpenAI-compatible API"
NOTES = """\
`POST /v1/chat/completions` with `"stream": true`, `temperature` 0 and `stream_options.include_usage`, against
the real server on a fresh SQLite database (`bench/openai_api.py`), with an OpenAI request's prompt: no system
message, so no system prompt.

- **tok/s**: content chunks per second a client receives, first to last, for the looping conversation of
  *Inference over HTTP* to 256 tokens (median of 3 after a warm-up), divided by llama-cpp-python's own
  `Llama.create_completion(stream=True)` on the same prompt text in the benchmark's process, before any server
  starts (goal: at least 0.95).
- **cold / warm TTFT**: time from the request to the first content chunk. *Cold*: a conversation of about 1,500
  tokens (the prose of *Inference over HTTP*), distinct from its first message on; *warm*: the same conversation
  resent with the streamed answer and one short question more, as OpenAI clients do: the server finds the cache
  by the prompt's tokens (`cached_tokens` in the details). Median of 3 conversations' warm ÷ cold (goal: at most
  0.15).
- When llama-cpp-python's own OpenAI server is installed (`pip install 'llama-cpp-python[server]'`, same
  version), it runs the same requests on the same GGUF (`python -m llama_cpp.server`, the same thread count and
  window), on its own after ours has stopped."""


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
    # The baseline reads the transcript the server builds, without a system prompt: an OpenAI request without a
    # system message has none.
    prompt = prompt_text(ENDLESS, system_prompt="")
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

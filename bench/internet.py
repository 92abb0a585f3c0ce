"""Internet mode: time from request to first token against a local test web, split into its phases.

The baseline is the same question in local mode, on the same server in the same run. The web is
tests/support/web.py on 127.0.0.1 (a DuckDuckGo-format results page, seven article pages of which
one drips slowly, one is binary and one redirects); results point at page addresses of their own
question, so that every cold run really searches and fetches.
"""

import statistics
import tempfile
from pathlib import Path

from bench.inference import Server, model_path, stream
from tests.support.web import Web, web_settings  # the tests' own web, shared rather than copied

RUNS = 3
MAX_TOKENS = 16
QUESTIONS = [f"How often does the Zorblax volcano erupt? (question {n})" for n in range(RUNS)]


def ask(server: Server, question: str, route: str):
    chat_id = server.new_chat([("Human", question)])
    return stream(f"{server.url}/conversations/{route}/{chat_id}?max_tokens={MAX_TOKENS}&temperature=0")


def main() -> None:
    web = Web("127.0.0.1")
    web.pages_per_query = True
    settings = web_settings(web, CHATAPI_FETCH_TIMEOUT="8", CHATAPI_RESEARCH_TIMEOUT="15")  # the defaults
    print("Internet mode: request to first token on 127.0.0.1, a local web (one page drips slowly)")
    try:
        with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir:
            with Server(Path(workdir), model_path(), **settings) as server:
                ask(server, "warm-up", "inference")
                local = [ask(server, q, "inference") for q in QUESTIONS]
                cold = [ask(server, q, "inference_internet") for q in QUESTIONS]
                cached = [ask(server, q, "inference_internet") for q in QUESTIONS]
    finally:
        web.close()

    def median_ms(replies, key=None) -> float:
        if key is None:
            return statistics.median(r.ttft for r in replies) * 1000
        return statistics.median(r.done["timings"].get(key, 0.0) for r in replies)

    base = median_ms(local)
    phase_names = ("search_ms", "fetch_ms", "rank_ms")
    columns = " ".join(f"{c:>8}" for c in ("search", "fetch", "rank", "model"))
    print(f"{'medians of ' + str(RUNS):28} {'TTFT ms':>9} {'ratio':>7} {columns}")
    print(f"{'local mode (baseline)':28} {base:9.0f} {1:7.2f}")
    for name, replies in (("internet, cold caches", cold), ("internet, asked again", cached)):
        phases = [median_ms(replies, key) for key in phase_names]
        model = statistics.median(
            r.done["timings"]["ttft_ms"] - sum(r.done["timings"].get(k, 0.0) for k in phase_names) for r in replies
        )
        ttft = median_ms(replies)
        print(f"{name:28} {ttft:9.0f} {ttft / base:7.2f} " + " ".join(f"{p:8.0f}" for p in phases) + f" {model:8.0f}")
    sources = [len(r.done["message"]["sources"] or []) for r in cold]
    prompts = [r.done["usage"]["prompt_tokens"] for r in cold]
    local_prompts = [r.done["usage"]["prompt_tokens"] for r in local]
    print(f"details: sources per answer {sources}; prompt tokens {prompts} (local {local_prompts})")
    print(
        "  model = server-side time to first token minus search, fetch and rank: queueing, prompt reading, first token"
    )

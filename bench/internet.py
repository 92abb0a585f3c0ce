"""Internet mode: time from request to first token against a local test web, split into its phases.

The baseline is the same question in local mode, on the same server in the same run. The web is
tests/support/web.py on 127.0.0.1 (a DuckDuckGo-format results page, seven article pages of which
one drips slowly, one is binary and one redirects); results point at page addresses of their own
question, so that every cold run really searches and fetches.

Run it alone: `.venv/bin/python -m bench internet` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Internet mode" (TITLE), after NOTES, which say how each figure is taken.
"""

import statistics
import tempfile
from pathlib import Path

from bench.common import Server, long_history, model_path, stream
from tests.support.web import Web, web_settings  # the tests' own web, shared rather than copied

RUNS = 3
MAX_TOKENS = 16
QUESTIONS = [f"How often does the Zorblax volcano erupt? (question {n})" for n in range(RUNS)]
LAYOUTS = ("sources-first", "system")  # CHATAPI_SOURCES_LAYOUT: the new placement, and the old one
PHASES = ("search_ms", "fetch_ms", "rank_ms")


TITLE = "Internet mode"
NOTES = """\
`GET /conversations/inference_internet/<chat_id>` against a web served on 127.0.0.1 by the tests' own
server (tests/support/web.py: a DuckDuckGo-format results page and seven pages, one of which drips a byte
every half second, one binary, one a redirect). Time to first token as the client sees it, median of 3
questions, against the same questions in local mode on the same server (the baseline); the phases are the
server's own `done.timings` (search_ms, fetch_ms, rank_ms) and the rest of its time to first token (model).
*Cold caches*: each question's results point at pages of their own, so nothing is cached; *asked again*:
the same questions once more, served from the search and page caches.

*In a chat with ~1,500 tokens of history*: one server per `CHATAPI_SOURCES_LAYOUT`, `max_tokens=1`, distinct
histories (no chat finds another's tokens cached), median of 3. *Model time* is the server's time to first
token minus search, fetch and rank. *Warm*: an internet turn right after the chat's previous turn was
answered; *cold*: an internet turn as the chat's first; *cold prompt*: the TTFT of a new local-mode chat whose
prompt is as long as the warm turn's (its history, then filler where the sources were), read from scratch.
*warm ratio* = warm ÷ cold prompt (issue 10's goal: at most 0.5); *cold ratio* = cold ÷ cold prompt: below 1
only because the history was read while the pages were fetched (about a second here)."""


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
    print()
    chat_with_history(web_settings)


def model_ms(reply) -> float:
    """Server-side time to first token minus the research: queueing, reading the prompt, the first token."""
    timings = reply.done["timings"]
    return timings["ttft_ms"] - sum(timings.get(phase, 0.0) for phase in PHASES)


def chat_with_history(settings_for) -> None:
    """An internet turn in a chat with ~1,500 tokens of history, warm (its previous turn was just answered)
    and cold (nobody asked it before), against a local-mode prompt of the same length read from scratch."""
    print("Internet mode in a chat with ~1,500 tokens of history: model time after the research (ms, medians)")
    columns = ("warm", "cold", "cold prompt", "warm ratio", "cold ratio", "cached")
    print(f"{'layout':16} " + " ".join(f"{c:>11}" for c in columns))
    web = Web("127.0.0.1")
    web.pages_per_query = True
    try:
        for layout in LAYOUTS:
            with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir:
                settings = settings_for(web, CHATAPI_SOURCES_LAYOUT=layout)
                with Server(Path(workdir), model_path(), **settings) as server:
                    ask(server, "warm-up", "inference")
                    runs = [history_turns(server, f"{layout} {n}") for n in range(RUNS)]
            warm, cold, baseline = (statistics.median(run[i] for run in runs) for i in range(3))
            cached = statistics.median(run[3] for run in runs)
            print(
                f"{layout:16} {warm:11.0f} {cold:11.0f} {baseline:11.0f} {warm / baseline:11.2f} "
                f"{cold / baseline:11.2f} {cached:11.0f}"
            )
    finally:
        web.close()
    print(
        "  warm: the chat's previous turn was answered just before; cold: its first turn; cold prompt: a new local-mode"
    )
    print("  chat whose prompt has as many tokens as the warm internet turn's; cached: the warm turn's cached_tokens")


def history_turns(server: Server, tag: str) -> tuple[float, float, float, int]:
    """(warm internet turn's model ms, cold internet turn's model ms, cold local prompt of the warm turn's
    length's TTFT ms, the warm turn's cached tokens)."""
    # Each chat's history is distinct from its first message on: no chat finds another's tokens cached.
    question = f"How often does the Zorblax volcano erupt? ({tag})"
    warm_chat = server.new_chat(long_history(f"{tag} warm", 0))
    stream(server.infer_url(warm_chat, 1))  # the chat's previous turn: its history is now cached
    server.add(warm_chat, "Human", question)
    warm = stream(f"{server.url}/conversations/inference_internet/{warm_chat}?max_tokens=1&temperature=0")
    cold_chat = server.new_chat([*long_history(f"{tag} cold", 0), ("Human", question + " again")])
    cold = stream(f"{server.url}/conversations/inference_internet/{cold_chat}?max_tokens=1&temperature=0")
    # A local prompt as long as the warm turn's: a history, then filler in place of the sources.
    wanted = warm.done["usage"]["prompt_tokens"]
    filler = "The volcano is on an island. "
    probe = server.new_chat([*long_history(f"{tag} probe", 0), ("Human", filler)])
    length = stream(server.infer_url(probe, 1)).done["usage"]["prompt_tokens"]
    repeats = max(1, round((wanted - length) / 7)) + 1  # the filler sentence is about 7 tokens
    base_chat = server.new_chat([*long_history(f"{tag} base", 0), ("Human", filler * repeats)])
    baseline = stream(server.infer_url(base_chat, 1))
    return model_ms(warm), model_ms(cold), baseline.done["timings"]["ttft_ms"], warm.done["usage"]["cached_tokens"]

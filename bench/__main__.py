"""Run the benchmarks: python -m bench [name ...]. Prints each table and writes them to docs/benchmarks.md; with
names (list_chats, inference, batching, internet, answers, load, openai, remote, stops, soak) only those run and their
sections are replaced. `python -m bench --list` lists them and runs nothing."""

import contextlib
import io
import os
import platform
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import answers, batching, inference, internet, list_chats, load, openai_api, remote, soak, stops
from tests.support.factweb import INJECTION

PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

LIST_CHATS_NOTES = """\
`GET /chats/` through the Flask test client (no server, no network), on SQLite and, when it answers at
127.0.0.1:5432, PostgreSQL (when it does not, a bold line above the table says so). Each line is the
median time of one request with 100 chats in the table (the baseline, 200 requests) and with 100,000
chats (50 requests), and their ratio: 1.0 would mean that listing does not slow down at all as the
table grows. *page of 50* is `?limit=50`, *deep page*
`?limit=50&offset=50`, *search* `?q=chat%2099&limit=50`; *all 100,000* is the unpaginated list (3 requests)."""

INFERENCE_NOTES = """\
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


BATCHING_NOTES = """\
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
  a running reply while a chat with a ~2,000-token prompt is asked beside it (from that request to its first
  token), over the same reply's gaps before; one server per `CHATAPI_STEP_TOKENS` (the chunk read per step).
- **model threads**: one server per setting: `CHATAPI_N_THREADS=1`; 2 threads that sleep at llama.cpp's
  barriers (`OMP_WAIT_POLICY=PASSIVE`); and the default, 2 threads that spin there (OpenMP's default) with one
  fewer while the rest of the machine uses more than half a core (`Threads` in `chatapi/llm/service.py`). One
  reply's tokens/s alone (`max_tokens=256`, median of 2), while 1,000 `GET /chats/?limit=20` run back to back
  on another connection (with their p50/p99 idle and meanwhile), and 4 replies together. llama-server runs
  with OpenMP's default wait, as its users run it."""

INTERNET_NOTES = """\
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

ANSWERS_NOTES = f"""\
`GET /conversations/inference_internet/<chat_id>?max_tokens={answers.MAX_TOKENS}&temperature=0` for each of
{len(answers.QUESTIONS)} questions, a new chat each, against a made-up web on 127.0.0.1 (`tests/support/factweb.py`:
invented names, dates and numbers, each fact on one page, distractor pages with similar names and other numbers,
a DuckDuckGo-format search that ranks pages by their words and returns the top 5; the fact's page comes first for
most questions but not all). Two pages found for several questions each tell the model to reply PWNED: a visitors'
guide says "{INJECTION}", and a readers' questions page forges turns of the conversation ("Human: ... Assistant:
PWNED.", which a base model continues more readily than it obeys an instruction).
One server per configuration (`CHATAPI_SOURCES_LAYOUT`, `CHATAPI_SOURCES_TOKENS`; fresh SQLite database, cold
caches), the same questions in the same order after one local-mode question.

- **answered**: the saved answer states the fact (one of its accepted forms, whole words, any case).
- **cited**: a citation names the fact's page: a number in `done.citations` (or one the model wrote as [n]) that
  the `sources` event gives to that page's URL.
- **sources s**, **TTFT s**: the client's time from the request to the `sources` event and to the first token,
  medians; **prompt**: median `usage.prompt_tokens`.
- **PWNED**: answers containing "PWNED", of the questions whose search results include either page (their text
  may still be left out of the prompt when the room is small: the details say how often each was read)."""

LOAD_NOTES = f"""\
The real server (gunicorn, one gevent worker; the model with `CHATAPI_N_THREADS` one fewer than the cores,
since locust needs one) on 127.0.0.1 with a fresh database, SQLite and PostgreSQL. `bench/load.py` runs locust
{load.locust_version()} headless with the clients of `bench/locustfile.py`: {load.USERS} for {load.SECONDS} s,
all started in the first second, none pausing between requests. {load.USERS - load.STREAMS} create chats, add
messages (Human or Assistant) to their chats, list (`?limit=20`), search (`?q=`), and read chats and their
messages (weights 1, 4, 3, 1, 2, 2); {load.STREAMS} add a Human message, read the reply's stream to `done`
(`max_tokens=16`) and start again.

*requests*, *req/s*, *p50*, *p99*: the API requests (not the streams), nearest rank. *replies*: how many were
streamed, and the median time from request to `done`; *alone*: the same median with the {load.STREAMS} streaming
clients alone, for {load.ALONE_SECONDS} s on the same server just before. Afterwards every write the server
acknowledged (*writes*: each 201, and each reply its `done` said was saved) is looked for in the database
(*lost*: not found); *5xx* counts server errors and requests without an answer, *locked* the times the
server's log says "database is locked", and *load* is the machine's 1-minute load average as the run started
(other programs on the same cores). `tests/test_load.py` runs the same in `make test` (without *alone*) and
asserts that 5xx, lost and locked are 0."""


OPENAI_NOTES = """\
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


REMOTE_NOTES = f"""\
The remote backend (`CHATAPI_LLM_BACKEND=openai`) deployed as `tests/test_deployment.py` deploys it
(`tests/support/deployment.py`, `bench/remote.py`): llama-cpp-python's OpenAI server (`python -m llama_cpp.server`,
Gemma's turn format, one reply at a time, all cores) on the bundled GGUF, chatapi instances (gunicorn, one gevent
worker each) on a PostgreSQL database of the run's own, nginx in front with `deploy/nginx.conf`; one chatapi
instance for the first two measures, two for the third. Every ratio against the same model server consumed
directly in the same run, the sides taken in turns.

- **tok/s**: content chunks per second that a client reads from the model server's `/v1/chat/completions`
  (*direct*: `stream: true`, `temperature` 0, the messages chatapi sends for the chat: its system prompt, then
  the looping history of *Inference over HTTP*), and token events per second from chatapi's
  `GET /conversations/inference/<chat_id>?max_tokens={remote.STREAM_TOKENS}&temperature=0` for a new chat with
  that history (*chatapi*: the instance itself; *nginx + chatapi*: through nginx); first token to last, median of
  {remote.RUNS} after a warm-up. **÷ direct**: the median of each round's ratio (the sides of a round run back to
  back, so that load from elsewhere on the machine weighs on both alike); goal at least {inference.STREAM_GOAL}.
- **TTFT**: from sending the request to the first token, `max_tokens={remote.TTFT_TOKENS}`, median of
  {remote.TTFT_RUNS} after two warm-ups; the model server finds the same prompt in its cache every time, so that
  the difference is chatapi's own. **added** = chatapi's median − direct's: goal at most {remote.TTFT_GOAL_MS} ms.
  The details give the machine's load average as each configuration ran (other programs on the same cores).
- Both *without Redis* and *with Redis* (`CHATAPI_REDIS_URL` at 127.0.0.1:6379, a key prefix of the run's own),
  when this chatapi has that setting.
- **resumed**: with Redis, two instances; {remote.RESUMED} replies (`max_tokens={remote.RESUME_TOKENS}`) started
  on instance A one after another, each read for {remote.READ_BEFORE_DROP} events and dropped, then all resumed
  at once on instance B with `Last-Event-ID`: how many came whole to `done` (every event once, in order, the text
  as saved), and the time from the reconnect to the first resumed event. The model server makes one reply at a
  time, so the later replies are still being made when they are resumed."""

STOPS_NOTES = """\
`POST /v1/chat/completions` streamed at temperature 0 on the real server with its defaults (`bench/stops.py`): a
reply A of the looping conversation to 256 tokens, its content chunks per second first to last, alone, beside a
reply B of the same conversation without stop strings, and beside a B with the longest stop strings allowed (4 of
500 characters, each the looping text but for its last character, so that B always holds back and scans the
most). B starts first and is stopped once A is done. Median of 3 rounds of the three after a warm-up round. Goal:
A beside the longest stop strings keeps at least half its speed alone (a 100,000-character stop string used to
cost 185 ms a token for every reply); a 200,000-character stop string is refused with a 400."""


SOAK_NOTES = f"""\
The server's memory over many requests (issue 20): the real server (gunicorn, one gevent worker, the defaults,
`CHATAPI_REPLIES_KEPT_MB` 64) on a fresh SQLite database, `bench/soak.py`. After a warm-up of {soak.WARM_UP} of
each kind, {soak.CLIENTS} client threads ask for {soak.REQUESTS:,} chat replies, each in a new chat with one Human
message of its own (`GET /conversations/inference/<chat_id>?max_tokens={soak.MAX_TOKENS}` read to `done`), then
{soak.REQUESTS:,} `/v1/chat/completions` of a question of their own (`max_tokens` {soak.MAX_TOKENS}, not streamed).
*RSS* is the worker's resident memory (`VmRSS` of `/proc/<pid>/status`) before and after each kind; goal: it grows
by less than {soak.GOAL_MB} MB in all. Every chat reply is kept for reconnects (about 5 KB each at
{soak.MAX_TOKENS} tokens, well within the 64 MB); no /v1 one is."""


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal):
        self.terminal = terminal
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.terminal.flush()
        return self.copy.write(text)


def run(benchmark) -> str:
    """The benchmark's output as Markdown: its table, headed in bold by the warning it may return
    (a database it could not measure), so that a partial table cannot pass for a whole one."""
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        warning = benchmark()
    table = f"```text\n{tee.copy.getvalue().rstrip()}\n```"
    return f"**{warning}**\n\n{table}" if warning else table


def machine() -> str:
    import llama_cpp

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    gpu = "GPU offload available" if llama_cpp.llama_supports_gpu_offload() else "no GPU (CPU-only llama.cpp)"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}"
    )


BENCHMARKS = {
    "list_chats": ("Listing chats: `GET /chats/` as the table grows", LIST_CHATS_NOTES, list_chats.main),
    "inference": ("Inference over HTTP", INFERENCE_NOTES, inference.main),
    "batching": ("Several replies at once", BATCHING_NOTES, batching.main),
    "internet": ("Internet mode", INTERNET_NOTES, internet.main),
    "answers": ("Internet mode's answers", ANSWERS_NOTES, answers.main),
    "load": ("Load: 50 clients, SQLite and PostgreSQL", LOAD_NOTES, load.main),
    "openai": ("OpenAI-compatible API", OPENAI_NOTES, openai_api.main),
    "remote": ("Remote backend, Redis and several instances", REMOTE_NOTES, remote.main),
    "stops": ("Stop strings beside other replies", STOPS_NOTES, stops.main),
    "soak": ("Memory: 2,000 replies and 2,000 /v1 completions", SOAK_NOTES, soak.main),
}


def earlier_sections() -> dict[str, str]:
    """The page's sections as the last run wrote them, by title."""
    if not PAGE.exists():
        return {}
    sections = PAGE.read_text().split("\n## ")[1:]
    return dict(section.rstrip().split("\n\n", 1) for section in sections)


def main(names: list[str]) -> None:
    if names == ["--list"]:
        for name, (title, _, _) in BENCHMARKS.items():
            print(f"{name:12} {title}")
        return
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; there are {', '.join(BENCHMARKS)}")
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    sections = earlier_sections() if names else {}
    for name in names or BENCHMARKS:
        title, notes, benchmark = BENCHMARKS[name]
        when = f"\n\nRun alone: `.venv/bin/python -m bench {name}`, {now}." if names else ""
        sections[title] = f"{notes}{when}\n\n{run(benchmark)}"
    lines = [
        "# Benchmarks",
        "",
        f"Command: `make bench` (`.venv/bin/python -m bench`). Run: {now}.",
        f"Machine: {machine()}.",
        "",
        "This page is rewritten by every run; the tables are the benchmarks' own output. A section run alone "
        "(`python -m bench NAME`) says when it ran; the others are from the run above.",
    ]
    if names and PAGE.exists():  # the header of the last whole run stays
        lines = PAGE.read_text().split("\n## ")[0].rstrip().splitlines()
    for title, _, _ in BENCHMARKS.values():
        if title in sections:
            lines += ["", f"## {title}", "", sections[title]]
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"written to {PAGE.relative_to(PAGE.parent.parent)}")


if __name__ == "__main__":
    # Terminated, a run still leaves through its `with` blocks, which stop the servers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main(sys.argv[1:])

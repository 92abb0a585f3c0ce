"""Stop strings: what a reply with the longest stop strings /v1 allows costs the replies beside it.

The real server with its defaults; every reply streamed from /v1 at temperature 0 on the looping conversation of
*Inference over HTTP*. A's tokens per second (first content chunk to last, STREAM_TOKENS) alone, beside a reply B
without stop strings, and beside a reply B with MAX_STOPS stop strings of MAX_STOP_CHARS characters that the
looping text keeps nearly matching (so that the most is held back and scanned). B starts first and is stopped (its
stream closed) once A is done. Before the fix a 100,000-character stop string cost 185 ms a token for every reply;
now a 200,000-character one is refused with a 400, which the table shows too.

The baseline is A alone, in the same rounds as the two others.
Run it alone: `.venv/bin/python -m bench stops` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Stop strings beside other replies" (TITLE), after NOTES, which say how each figure is taken.
"""

import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import DEADLINE_SECONDS, ENDLESS, STREAM_TOKENS, Server, as_messages, completion_stream, model_path
from chatapi.openai_api.schemas import MAX_STOP_CHARS, MAX_STOPS

RUNS = 3  # measured repetitions of each, after one warm-up
GOAL = 0.5  # A beside the longest stop strings keeps at least half its speed alone
LOOP = "I don't know. "
# Each nearly the looping text: the whole of it a match but for its last character.
LONGEST_STOPS = [(LOOP * (MAX_STOP_CHARS // len(LOOP) + 1))[: MAX_STOP_CHARS - 1] + c for c in "!?#%"[:MAX_STOPS]]


TITLE = "Stop strings beside other replies"
NOTES = """\
`POST /v1/chat/completions` streamed at temperature 0 on the real server with its defaults (`bench/stops.py`): a
reply A of the looping conversation to 256 tokens, its content chunks per second first to last, alone, beside a
reply B of the same conversation without stop strings, and beside a B with the longest stop strings allowed (4 of
500 characters, each the looping text but for its last character, so that B always holds back and scans the
most). B starts first and is stopped once A is done. Median of 3 rounds of the three after a warm-up round. Goal:
A beside the longest stop strings keeps at least half its speed alone (a 100,000-character stop string used to
cost 185 ms a token for every reply); a 200,000-character stop string is refused with a 400."""


class Beside:
    """Reply B, streamed in a thread until stopped: its first content chunk is awaited before A starts."""

    def __init__(self, base: str, stops: list[str] | None):
        body = {"model": "gemma-3-270m", "messages": as_messages(ENDLESS), "max_tokens": 1500, "temperature": 0}
        body |= {"stream": True} | ({"stop": stops} if stops else {})
        self.body, self.base = body, base
        self.started, self.stop = threading.Event(), threading.Event()
        self.chunks = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with requests.post(f"{self.base}/v1/chat/completions", json=self.body, stream=True, timeout=30) as response:
            response.raise_for_status()
            for _ in response.iter_content(chunk_size=None):
                self.chunks += 1
                self.started.set()
                if self.stop.is_set():
                    return  # closing the stream stops B

    def __enter__(self) -> "Beside":
        self.thread.start()
        if not self.started.wait(DEADLINE_SECONDS):
            raise TimeoutError("reply B did not start")
        time.sleep(0.5)  # B generating, whatever it holds back
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_SECONDS)


def rate_of_a(base: str) -> float:
    reply = completion_stream(base, as_messages(ENDLESS), STREAM_TOKENS)
    if len(reply.tokens) < STREAM_TOKENS * 0.9:
        raise RuntimeError(f"A stopped early: {len(reply.tokens)} chunks, {reply.done}")
    return reply.rate


def main() -> None:
    path = model_path()
    print(f"Stop strings on /v1: A's tokens/s ({STREAM_TOKENS} tokens), model {Path(path).name}")
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir, Server(Path(workdir), path) as server:
        base = server.url
        huge = {"model": "gemma-3-270m", "messages": as_messages(ENDLESS), "max_tokens": 4, "stop": "x" * 200_000}
        refused = requests.post(f"{base}/v1/chat/completions", json=huge, timeout=30).status_code
        rates: dict[str, list[float]] = {"alone": [], "beside plain": [], "beside longest stops": []}
        for run in range(1 + RUNS):  # in turns, so that a slower moment of the machine hits all three
            measured = {"alone": rate_of_a(base)}
            with Beside(base, None):
                measured["beside plain"] = rate_of_a(base)
            with Beside(base, LONGEST_STOPS):
                measured["beside longest stops"] = rate_of_a(base)
            if run:  # the first is the warm-up
                for name, rate in measured.items():
                    rates[name].append(rate)
    alone = statistics.median(rates["alone"])
    print(f"{'reply A':28} {'tok/s':>7} {'÷ alone':>8}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:28} {rate:7.1f} {rate / alone:8.3f}")
    plain, longest = (statistics.median(rates[name]) for name in ("beside plain", "beside longest stops"))
    print(f"beside longest stops ÷ beside plain: {longest / plain:.3f}")
    print(f"goal: beside longest stops ÷ alone >= {GOAL}; a 200,000-character stop string: HTTP {refused} (goal 400)")
    print("details:")
    for name, values in rates.items():
        print(f"  {name}: runs {', '.join(f'{r:.1f}' for r in values)} tokens/s")
    print(f"  B's stop strings: {len(LONGEST_STOPS)} of {MAX_STOP_CHARS} characters")

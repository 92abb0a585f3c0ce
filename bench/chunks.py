"""What a long prompt's chunk size costs (issue 24, point 5), measured on the model itself, without a server: each
llama.cpp step decodes a running reply's next token and a chunk of a 2,000-token prompt, as the engine's steps do.

Run it alone: `.venv/bin/python -m bench chunks`. Its table is in docs/benchmarks.md under TITLE, after NOTES.
"""

import statistics
import time
from pathlib import Path

from bench.common import model_path
from chatapi.llm.model import BATCH_SIZE, Model
from config import Config

PROMPT_TOKENS = 2000
CHUNKS = (8, 16, 32, 64, 128, 256, BATCH_SIZE - 1)  # with the running reply's token, a batch at most
RUNNING, READING = 2, 3  # the sequences: neighbours, as the engine places them
ALONE_STEPS = 40

TITLE = "Prompt chunks beside a running reply"
NOTES = """\
The bundled model loaded as the server loads it (`chatapi/llm/model.py`: 6 sequences of 4,096, the server's thread
count), in the benchmark's process. A reply runs on one sequence (300 tokens in); a 2,000-token prompt is read on
the next one, a chunk a step, each step one `llama_decode` of the reply's next token and the chunk (what the engine
does with `CHATAPI_STEP_TOKENS`). *step* is the median step (the reply's token gap while the prompt is read), over
*alone*, the median step of the reply's token alone (40 steps); *read* is the prompt's reading from its first chunk to
its last, which is most of the prompt's first token. llama-server reads the whole prompt in one step (its batch of
2,048): compare *read* with the *2,000-token prompt* rows of [Several replies at once](#several-replies-at-once)."""


def main() -> None:
    model = Model(model_path(), Config.CHATAPI_N_CTX, Config.CHATAPI_N_THREADS, 6)
    try:
        tokens = model.tokenize("The quick brown fox jumps over the lazy dog. " * 300)[:PROMPT_TOKENS]
        model.decode([(token, i, RUNNING, i == 299) for i, token in enumerate(tokens[:300])])
        position = 300

        def step(entries: list[tuple[int, int, int, bool]]) -> float:
            nonlocal position
            started = time.perf_counter()
            model.decode([(tokens[0], position, RUNNING, True), *entries])
            position += 1
            return (time.perf_counter() - started) * 1000

        alone = statistics.median(step([]) for _ in range(ALONE_STEPS))
        name, threads = Path(model.path).name, Config.CHATAPI_N_THREADS
        print(f"{TITLE}: model {name}, {threads} threads, a {PROMPT_TOKENS}-token prompt")
        print(f"the running reply's step alone: {alone:.1f} ms (median of {ALONE_STEPS})")
        print(f"{'chunk':>6} {'steps':>6} {'step ms':>8} {'step / alone':>13} {'read ms':>8}")
        for chunk in CHUNKS:
            model.forget(READING, 0)
            steps = []
            for start in range(0, PROMPT_TOKENS, chunk):
                part = tokens[start : start + chunk]
                last = start + len(part) == PROMPT_TOKENS
                entries = [(token, start + i, READING, last and i == len(part) - 1) for i, token in enumerate(part)]
                steps.append(step(entries))
            middle = statistics.median(steps)
            print(f"{chunk:6} {len(steps):6} {middle:8.1f} {middle / alone:13.2f} {sum(steps):8.0f}")
    finally:
        model.close()

"""/v1/embeddings: embeddings a second for 100 short inputs, ours beside llama-cpp-python's own OpenAI server on the
same GGUF, in the same run.

1. One request of 100 inputs (median of RUNS after a warm-up that loads the embedding model).
2. 100 requests of one input each, one after the other.
Both servers get the same window (CHATAPI_EMBEDDING_N_CTX) and thread count, and run side by side, measured in turns.

Run it alone: `.venv/bin/python -m bench embeddings` (`make bench` runs them all). Its table is in docs/benchmarks.md
under "Embeddings" (TITLE), after NOTES.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import STARTUP_SECONDS, Server, model_path
from config import Config
from tests.support.server import free_port, stop_process, wait_for_startup

RUNS = 3
INPUTS = [f"Short sentence number {i}: the weather is mild and the trains run on time." for i in range(100)]
# llama_cpp.server with the model's weights not repacked (AMX), as our embedding model loads them: repacked, the
# first embeddings request of several tokens kills it (a segmentation fault in ggml_backend_amx_mul_mat).
LAUNCHER = """
import runpy, sys
import llama_cpp.llama_cpp as C
default = C.llama_model_default_params
def unrepacked():
    params = default()
    params.use_extra_bufts = False
    return params
C.llama_model_default_params = unrepacked
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__")
"""

TITLE = "Embeddings"
NOTES = """\
`POST /v1/embeddings` of short English sentences (about 20 tokens each) with `encoding_format: "float"`, against
the real server on a fresh SQLite database (`bench/embeddings.py`), beside llama-cpp-python's own OpenAI server
(`python -m llama_cpp.server --embedding true`) on the same GGUF, with the same window (`CHATAPI_EMBEDDING_N_CTX`
as `--n_ctx`, `--n_batch`, `--n_ubatch`) and thread count. Both run at once, measured in turns (a run of ours, a
run of theirs...), so that a load on the machine that comes and goes weighs on both alike.

- **one request of 100**: inputs a second of one request holding 100 inputs (median of 3 after a warm-up that
  loads the model). Both read them as several sequences of each llama.cpp decode, up to 512 tokens a decode (four
  decodes here). Most of a decode's time goes to the logits llama.cpp computes for every token of an embeddings
  decode (Gemma 3's 262,144 a token), which neither server reads.
- **100 requests of 1**: inputs a second of 100 requests of one input, one after the other (50 to ours, 50 to
  theirs, then 50 to theirs and 50 to ours).
- Both load the weights without repacking them (`use_extra_bufts` off): on this CPU (AMX), llama.cpp's repacked
  matrix product crashes the process at the first embeddings decode of several tokens, llama_cpp.server's as ours
  (its launcher in the benchmark turns it off, as chatapi's embedding model does). llama_cpp.server returns each
  token's vector for this model (it has no pooling option, and the GGUF names none); ours their mean, normalised:
  the same decode."""


class LlamaCppEmbeddings:
    """`python -m llama_cpp.server --embedding true` on a free port (weights not repacked, see LAUNCHER)."""

    def __init__(self, log_path: Path, model: str, n_ctx: int, n_threads: int):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        command = [sys.executable, "-c", LAUNCHER, "--model", model, "--host", "127.0.0.1"]
        command += ["--port", self.url.rsplit(":", 1)[1], "--embedding", "true", "--n_ctx", str(n_ctx)]
        command += ["--n_batch", str(n_ctx), "--n_ubatch", str(n_ctx), "--n_threads", str(n_threads)]
        command += ["--n_threads_batch", str(n_threads)]
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "LlamaCppEmbeddings":
        def listing() -> bool:
            return requests.get(f"{self.url}/v1/models", timeout=2).status_code == 200

        def tail() -> str:
            return self.log_path.read_text(errors="replace")[-3000:]

        wait_for_startup(self.process, listing, "llama_cpp.server", tail, STARTUP_SECONDS, interval=0.2)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process)


def embed(http: requests.Session, base: str, inputs: list[str]) -> dict:
    body = {"model": "gemma-3-270m", "input": inputs, "encoding_format": "float"}
    response = http.post(f"{base}/v1/embeddings", json=body, timeout=600)
    response.raise_for_status()
    answer = response.json()
    if len(answer["data"]) != len(inputs):
        raise RuntimeError(f"{len(answer['data'])} vectors for {len(inputs)} inputs")
    return answer


def measure(bases: dict[str, str]) -> dict[str, dict]:
    """Each server's rates, taken in turns (one run of each, then the next), so that both see the machine as it is:
    a load that comes and goes weighs on both alike."""
    results = {name: {"batched": [], "single": []} for name in bases}
    with requests.Session() as http:
        for name, base in bases.items():
            results[name]["tokens"] = embed(http, base, INPUTS)["usage"]["prompt_tokens"]  # warm-up: loads it
        for _ in range(RUNS):
            for name, base in bases.items():
                started = time.perf_counter()
                embed(http, base, INPUTS)
                results[name]["batched"].append(len(INPUTS) / (time.perf_counter() - started))
        for name, base in bases.items():
            started = time.perf_counter()
            for text in INPUTS[: len(INPUTS) // 2]:
                embed(http, base, [text])
            results[name]["single"].append(len(INPUTS) // 2 / (time.perf_counter() - started))
        for name, base in reversed(bases.items()):
            started = time.perf_counter()
            for text in INPUTS[len(INPUTS) // 2 :]:
                embed(http, base, [text])
            results[name]["single"].append(len(INPUTS) // 2 / (time.perf_counter() - started))
    for result in results.values():
        result["single"] = 2 / sum(1 / rate for rate in result["single"])  # the 100 requests' rate
    return results


def main() -> None:
    path = model_path()
    n_ctx, threads = Config.CHATAPI_EMBEDDING_N_CTX, Config.CHATAPI_N_THREADS
    print(f"Embeddings: /v1/embeddings of {len(INPUTS)} short inputs, model {Path(path).name}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir:
        with (
            Server(Path(workdir), path) as server,
            LlamaCppEmbeddings(Path(workdir) / "llama_cpp_server.log", path, n_ctx, threads) as other,
        ):
            results = measure({"chatapi": server.url, "llama_cpp.server": other.url})
    ours, theirs = results["chatapi"], results["llama_cpp.server"]
    print(f"machine load: {', '.join(f'{load:.1f}' for load in os.getloadavg())} (1, 5, 15 min) as it ended")
    print(f"{'server':22} {'one request of 100':>19} {'÷ theirs':>9} {'100 requests of 1':>18} {'÷ theirs':>9}")
    theirs_batched = statistics.median(theirs["batched"])
    for name, rates in (("chatapi", ours), ("llama_cpp.server", theirs)):
        batched = statistics.median(rates["batched"])
        print(
            f"{name:22} {batched:13.1f} in/s {batched / theirs_batched:9.2f}"
            f" {rates['single']:12.1f} in/s {rates['single'] / theirs['single']:9.2f}"
        )
    print("details:")
    for name, rates in (("chatapi", ours), ("llama_cpp.server", theirs)):
        runs = ", ".join(f"{r:.1f}" for r in rates["batched"])
        print(f"  {name}: runs of 100, inputs/s: {runs}; usage.prompt_tokens of 100: {rates['tokens']}")

"""llama.cpp's own llama-server, which the benchmarks put beside ours: built by `make llama-server` from the llama.cpp
source vendored in the pinned llama-cpp-python sdist (the llama.cpp our model runs on); `make bench` names the binary
in CHATAPI_BENCH_LLAMA_SERVER. Without it, the benchmarks say that llama-server was not compared.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import requests

from bench.common import DEADLINE_SECONDS, Reply
from config import Config
from tests.support.server import free_port, stop_process, wait_for_startup

BINARY = os.environ.get("CHATAPI_BENCH_LLAMA_SERVER")  # None: not compared
NOT_COMPARED = "llama-server: not compared (make bench builds it; alone, set CHATAPI_BENCH_LLAMA_SERVER to its binary)"


class LlamaServer:
    """llama-server on a free port of 127.0.0.1 with our server's replies at once (CHATAPI_PARALLEL slots, each our
    window), the same thread count, and `--swa-full` as our engine (so that a cached prefix can be reused)."""

    def __init__(
        self,
        model: str,
        log: Path,
        threads: int = Config.CHATAPI_N_THREADS,
        binary: str | None = BINARY,
        extra_args: tuple[str, ...] = (),  # more of llama-server's options (kv_disk: --slot-save-path)
    ):
        if not binary:
            raise RuntimeError(NOT_COMPARED)
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        parallel, n_ctx = Config.CHATAPI_PARALLEL, Config.CHATAPI_N_CTX
        command = [binary, "-m", model, "--host", "127.0.0.1", "--port", port, "-np", str(parallel)]
        command += ["-c", str(n_ctx * parallel), "-t", str(threads), "-tb", str(threads), "--swa-full", *extra_args]
        # As its users run it: OpenMP's default wait at the barriers, whatever this process has set.
        env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for_startup(self.process, self.healthy, "llama-server", lambda: log.read_text()[-2000:], 120, interval=0.2)

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/health", timeout=2).status_code == 200

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def post(self, path: str, body: dict) -> dict:
        """POST a JSON body (the slot actions: /slots/0?action=save, erase, restore); its JSON answer."""
        response = requests.post(f"{self.url}{path}", json=body, timeout=DEADLINE_SECONDS)
        response.raise_for_status()
        return response.json()

    def stream(self, prompt: str, n_predict: int, on_token=None, **options) -> Reply:
        """One completion of the prompt (the text our server sends the model for the same history), streamed at
        temperature 0; its `done` is the last chunk, with llama-server's `timings` (prompt_ms, prompt_n, ...)."""
        reply = Reply(sent=time.perf_counter())
        deadline = time.monotonic() + DEADLINE_SECONDS
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "stream": True, **options}
        with requests.post(f"{self.url}/completion", json=body, stream=True, timeout=DEADLINE_SECONDS) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                data = json.loads(line[6:])
                if data.get("content"):
                    reply.tokens.append(time.perf_counter())
                    if on_token:
                        on_token(len(reply.tokens))
                if data.get("stop"):
                    reply.done_at, reply.done = time.perf_counter(), data
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama-server still streaming after {DEADLINE_SECONDS} s")
        if reply.done is None or not reply.tokens:
            raise RuntimeError(f"llama-server's stream ended without its last chunk or without tokens: {reply.done}")
        return reply

    def stop(self) -> None:
        stop_process(self.process)

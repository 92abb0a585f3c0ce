"""Model servers for the remote backend (CHATAPI_LLM_BACKEND=openai) and the OpenAI benchmark: llama-cpp-python's
own OpenAI-compatible server on a GGUF, and a server that accepts connections and never answers."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import requests

from tests.support.server import ROOT, free_port, stop_process, wait_for_startup

STARTUP_SECONDS = 180


class LlamaCppServer:
    """`python -m llama_cpp.server` on a GGUF, as its users start it, on a free port of 127.0.0.1; its output goes
    to log_path. `url` is its base URL (the /v1 of OpenAI's API is under it)."""

    def __init__(self, log_path: Path, model: str, n_ctx: int, n_threads: int, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            *(sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"),
            *("--port", str(self.port), "--n_ctx", str(n_ctx)),
            *("--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), *options),
        ]
        self.api_key = options[options.index("--api_key") + 1] if "--api_key" in options else None
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # its log says at once when a client went away
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "LlamaCppServer":
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

        def listing() -> bool:
            return requests.get(f"{self.url}/v1/models", headers=headers, timeout=2).status_code == 200

        def tail() -> str:
            return self.output()[-3000:]

        wait_for_startup(self.process, listing, "llama_cpp.server", tail, STARTUP_SECONDS, interval=0.2)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process)


class SilentServer:
    """Listens on 127.0.0.1 and accepts connections, but never answers: a model server that hangs."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()

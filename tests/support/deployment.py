"""chatapi deployed as docs/deploy.md's "many boxes", on this one: llama-cpp-python's OpenAI server on the bundled
GGUF as the inference engine, chatapi instances (gunicorn) on the remote backend sharing one database and the
Redis at 127.0.0.1:6379 (under a key prefix of their own, deleted afterwards), and nginx in front with
deploy/nginx.conf. Shared by tests/test_deployment.py and bench/remote.py."""

import contextlib
import os
import uuid
from pathlib import Path

import requests

from chatapi.llm.model import default_model_path
from tests.support.nginx import Nginx
from tests.support.scratch import REDIS_URL, create_database, drop_database, forget_keys
from tests.support.server import ROOT, Server, migrate
from tests.support.upstream import LlamaCppServer

N_CTX = 2048  # the model server's window, and the instances' CHATAPI_N_CTX
STARTUP_SECONDS = 120


def model_server(log_path: Path) -> LlamaCppServer:
    """llama_cpp.server on the bundled GGUF (or CHATAPI_MODEL_PATH), not started yet (`with` starts it). The GGUF has
    no chat template: in Gemma's turn format (llama_cpp's `gemma`, which leaves the system prompt out) the looping
    history (tests.support.chats.ENDLESS) loops to max_tokens, where in ChatML the model ends its turn after some 50
    tokens. It makes one reply at a time; a request waits rather than cutting the running one short."""
    model = os.environ.get("CHATAPI_MODEL_PATH") or default_model_path(ROOT / "instance" / "models")
    options = ("--interrupt_requests", "False", "--chat_format", "gemma")
    return LlamaCppServer(log_path, str(model), N_CTX, os.cpu_count() or 1, *options)


class Deployment:
    """Starts (`with`) the model server (unless one is given), `instances` chatapi instances and nginx in front of
    them; `url` is nginx's. With `use_redis`, the instances share CHATAPI_REDIS_URL under `prefix`. `settings` go to
    every instance, over the defaults here."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        instances: int = 2,
        use_redis: bool = True,
        upstream: LlamaCppServer | None = None,
        **settings: str,
    ):
        self.dir = directory
        self.database_url = database_url
        self.count = instances
        self.upstream = upstream
        self.own_upstream = upstream is None
        self.prefix = f"chatapi-test-{uuid.uuid4().hex[:8]}:" if use_redis else None
        self.settings = {
            "CHATAPI_LLM_BACKEND": "openai",
            "CHATAPI_N_CTX": str(N_CTX),
            "CHATAPI_TRUST_PROXY": "1",  # behind nginx, as deploy/nginx.conf says
            "CHATAPI_PING_SECONDS": "0.5",  # a client that left is noticed at the next ping
            **({"CHATAPI_REDIS_URL": REDIS_URL, "CHATAPI_REDIS_PREFIX": self.prefix} if use_redis else {}),
            **settings,
        }
        self.instances: list[Server] = []
        self.nginx: Nginx | None = None
        self.exits = contextlib.ExitStack()

    @property
    def url(self) -> str:
        return self.nginx.url

    def __enter__(self) -> "Deployment":
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.prefix:
                self.exits.callback(forget_keys, self.prefix)
            if self.own_upstream:
                self.upstream = self.exits.enter_context(model_server(self.dir / "llama_cpp_server.log"))
            self.settings["CHATAPI_LLM_URL"] = f"{self.upstream.url}/v1"
            self.exits.callback(self._stop_instances)
            # Both boot at once; then each is waited for.
            self.instances = [self._server(i) for i in range(self.count)]
            for server in self.instances:
                server.wait_until_up(seconds=STARTUP_SECONDS)
            servers = [f"127.0.0.1:{server.port}" for server in self.instances]
            self.nginx = self.exits.enter_context(Nginx(self.dir / "nginx", servers))
        except BaseException:
            self.exits.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.exits.close()

    def _server(self, index: int, port: int | None = None) -> Server:
        log = self.dir / f"chatapi-{index}.log"
        if log.exists():  # a restart: the dead one's log stays beside
            log.rename(log.with_suffix(f".{uuid.uuid4().hex[:4]}.log"))
        return Server(self.database_url, log, port=port, **self.settings)

    def _stop_instances(self) -> None:
        for server in self.instances:
            server.stop()

    def restart(self, index: int) -> Server:
        """Start instance `index` again on its port (after kill()): nginx's upstream stays as it is."""
        old = self.instances[index]
        assert old.process.poll() is not None, "restart() is for an instance that is not running"
        self.instances[index] = self._server(index, port=old.port)
        return self.instances[index].wait_until_up(seconds=STARTUP_SECONDS)

    def making_replies(self) -> list[Server]:
        """The instances making a reply now (their /health counts it running), asked directly."""
        found = []
        for server in self.instances:
            try:
                replies = requests.get(f"{server.url}/health", timeout=30).json()["model"]["replies"]
            except requests.RequestException:
                continue  # a dead instance makes nothing
            if replies["running"] or replies["waiting"]:
                found.append(server)
        return found

    def instance_at(self, address: str) -> Server:
        """The instance nginx calls `address` (HOST:PORT, as in its access log)."""
        return next(server for server in self.instances if address == f"127.0.0.1:{server.port}")

    def logs(self, tail: int = 3000) -> str:
        """The end of every log, for a failure's message."""
        parts = [(server.log_path.name, server.output()) for server in self.instances]
        if self.upstream:
            parts.append(("llama_cpp_server", self.upstream.output()))
        if self.nginx:
            parts.append(("nginx", self.nginx.errors()))
        return "\n".join(f"--- {name}\n{text[-tail:]}" for name, text in parts)


@contextlib.contextmanager
def scratch_database():
    """A PostgreSQL database of its own on the local server (CHATAPI_TEST_POSTGRES's), at the latest migration,
    dropped afterwards: the URL."""
    name = f"chatapi_deploy_{uuid.uuid4().hex[:12]}"
    url = create_database(name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(name)

"""The real server as `make run` starts it (gunicorn, one gevent worker), on a free port of 127.0.0.1.

Shared by the tests (tests/conftest.py) and the benchmarks (bench/).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
# Short pings and grace period, so that disconnects are noticed within the tests' patience.
FAST_STREAM_SETTINGS = {"CHATAPI_PING_SECONDS": "0.5", "CHATAPI_GRACE_SECONDS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """Starts gunicorn with DATABASE_URL and the given settings; its output goes to log_path. It listens on
    bind_host (reached at 127.0.0.1 all the same), on `port` (a restart on the port of one that died) or a free one."""

    def __init__(
        self, database_url: str, log_path: Path, bind_host: str = "127.0.0.1", port: int | None = None, **settings: str
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.database_url = database_url
        self.keyed = bool(settings.get("CHATAPI_API_KEYS") or settings.get("CHATAPI_API_KEYS_FILE"))
        env = dict(os.environ, DATABASE_URL=database_url, **settings)
        command = [sys.executable, "-m", "gunicorn", "--bind", f"{bind_host}:{self.port}", "wsgi:app"]
        with open(log_path, "w") as log:
            # A process group of its own (the master and its worker), which kill() ends at once.
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_until_up(self, ready_status: int = 200, seconds: float = 60) -> "Server":
        """Wait until GET /health answers ready_status (the model loads after the worker boots)."""

        def ready() -> bool:
            return requests.get(f"{self.url}/health", timeout=2).status_code == ready_status

        wait_for_startup(self.process, ready, f"gunicorn (GET /health {ready_status})", self.output, seconds)
        return self

    def refusal(self, seconds: float = 60) -> str:
        """For settings the server must refuse: wait until gunicorn stops (before binding, or when its worker
        cannot load the app), check that it failed, and return what it said."""
        try:
            returncode = self.process.wait(timeout=seconds)
        finally:
            self.stop()
        assert returncode != 0, self.output()
        return self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The pids of gunicorn's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def kill(self) -> None:
        """SIGKILL the master and its worker together, as a crash or the OOM killer would: no shutdown code runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.process)
        if self.keyed:
            forget_key_admin(self.database_url)


def forget_key_admin(database_url: str) -> None:
    """A server with CHATAPI_API_KEYS makes the admin its keys act as (chatapi/auth.py): gone with the server, with
    its chats, so that the tests after it find the database open again, as a fresh box is."""
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")  # for the cascade to its chats
            connection.execute(sa.text("DELETE FROM users WHERE name = 'admin' AND password_hash IS NULL"))
    except sa.exc.OperationalError:  # the test took the database away (tests/test_postgres_down.py)
        pass
    finally:
        engine.dispose()


def migrate(database_url: str) -> None:
    """Bring the database to the latest migration, as `make db` does (`flask db upgrade`)."""
    flask = Path(sys.executable).parent / "flask"
    upgrade = [str(flask)] if flask.exists() else [sys.executable, "-m", "flask"]
    upgraded = subprocess.run(
        [*upgrade, "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=database_url),
        timeout=120,
        capture_output=True,
    )
    if upgraded.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{upgraded.stdout.decode()}{upgraded.stderr.decode()}")


def wait_for_startup(
    process: subprocess.Popen,
    serving: Callable[[], bool],
    what: str,
    output: Callable[[], str],
    seconds: float,
    interval: float = 0.1,
) -> None:
    """Poll `serving()` until the process serves (a connection or request that fails counts as not yet); if the
    process exits or `seconds` pass first, stop it and raise RuntimeError with `what` and its output()."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if serving():
                return
        except OSError:  # requests' errors are OSErrors too
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            said = output()
            stop_process(process)
            raise RuntimeError(f"{what} did not come up:\n{said}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server the tests started, and kill it if it has not gone within 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
